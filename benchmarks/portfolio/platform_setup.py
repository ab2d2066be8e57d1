"""The portfolio benchmark's set-up (run.py runs it): the models and the dataset, the platform's processes
(a node agent and the gateway), the fine-tune job, the deployments and the priced endpoints. Imported after
``django.setup()`` (run.py does it); the scoring is scoring.py's.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from benchmarks.gateway.harness import Processes
from benchmarks.platform_processes import base_env, start_gateway, start_node_agent, wait
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.billing import subjects
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.billing.services import set_price
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import Model, ModelVersion
from portfolio.registry.tasks import import_version
from serving import reconcile
from serving import services as serving
from serving.choices import ReplicaState
from serving.models import ComputePool, Deployment, Endpoint, Replica
from training import finetune, ingest
from training import services as training
from training.choices import JobStatus
from training.models import Dataset, DatasetVersion, FineTuneJob

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "training" / "demo_data" / "ticket_routing.jsonl"
EVAL_FRACTION = 0.25
NODE = "bench-node"
POOL = "bench-cpu"
SMOL_PRICE = {"input_per_million": Decimal("0.50"), "output_per_million": Decimal("1.50")}
GEMMA_PRICE = {"input_per_million": Decimal("1.00"), "output_per_million": Decimal("3.00")}
ENGINE_TIMEOUT = 1500
TRAIN_TIMEOUT = 1800
ACTOR = Actor.for_system("benchmark")


def say(message: str) -> None:
    print(f"[bench-portfolio {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# --- 1. Models and the dataset ---------------------------------------------------------------------------
def models(team: Team) -> tuple[ModelVersion, ModelVersion]:
    call_command("import_demo_model", team=team.slug)
    smol = ModelVersion.objects.get(model__name=MODEL_NAME, status=VersionStatus.READY, source=Source.GGUF)
    gemma = ModelVersion.objects.filter(model__name="gemma-3-270m", status=VersionStatus.READY).first()
    if gemma is None:
        from tests.registry.gemma import fetch_gemma_gguf

        gguf = fetch_gemma_gguf(Path(settings.DATA_DIR))
        imports = settings.IMPORT_ROOTS[0] / "gemma"
        imports.mkdir(parents=True, exist_ok=True)
        target = imports / gguf.name
        if not target.exists():
            os.link(gguf, target)
        model = Model.objects.filter(name="gemma-3-270m").first() or registry.create_model(
            actor=ACTOR, name="gemma-3-270m", owner_team=team, description="Gemma 3 270M (base, Q4_K_M GGUF)."
        )
        say("importing Gemma 3 270M from its GGUF (converted to safetensors)")
        gemma = registry.start_import(
            actor=ACTOR, model=model, source=Source.GGUF, ref=str(target), enqueue=False
        )
        import_version(gemma.pk)
        gemma.refresh_from_db()
        if gemma.status != VersionStatus.READY:
            raise RuntimeError(f"Gemma import failed: {gemma.status_detail}")
    return smol, gemma


def dataset_version(team: Team, base: ModelVersion) -> DatasetVersion:
    dataset = Dataset.objects.filter(owner_team=team, name="ticket-routing-bench").first()
    if dataset is None:
        dataset = training.create_dataset(
            actor=ACTOR, owner_team=team, name="ticket-routing-bench", kind="chat"
        )
    version = dataset.versions.order_by("-number").first()
    if version is None:
        with DEMO_DATA.open("rb") as handle:
            pending = training.upload_version(
                actor=ACTOR,
                dataset=dataset,
                chunks=[handle.read()],
                filename=DEMO_DATA.name,
                base_version=base,
                eval_fraction=EVAL_FRACTION,
                enqueue=False,
            )
        version, _ = ingest.run_here(pending.pk, actor=ACTOR)
    return version


# --- 2-3. Processes, training, deployments ----------------------------------------------------------------
def start_platform(procs: Processes, data: Path, threads: int | None) -> str:
    env = base_env(threads)
    logs = data / "bench-logs"
    logs.mkdir(exist_ok=True)
    start_node_agent(procs, data, logs, env, pool=POOL, node=NODE, concurrency=1)
    return start_gateway(procs, logs, env)


def fine_tune(
    team: Team, base: ModelVersion, version: DatasetVersion, pool: ComputePool, log: Path
) -> FineTuneJob:
    job = (
        FineTuneJob.objects.filter(dataset_version=version, base_version=base, status=JobStatus.SUCCEEDED)
        .order_by("-pk")
        .first()
    )
    if job is None:
        target = Model.objects.filter(name="ticket-router-bench").first() or registry.create_model(
            actor=ACTOR, name="ticket-router-bench", owner_team=team
        )
        job = finetune.start_job(
            actor=ACTOR, base_version=base, dataset_version=version, pool=pool, target_model=target
        )
        say(f"fine-tune job #{job.pk} queued on {job.node.name} with the default hyperparameters")
        job = wait(
            "the fine-tune job",
            lambda: FineTuneJob.objects.filter(pk=job.pk, status__in=JobStatus.finished()).first(),
            TRAIN_TIMEOUT,
            [log],
            interval=3,
        )
        if job.status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"the fine-tune job {job.status}: {job.status_detail}\n{job.log_tail}")
    return job


def training_figures(job: FineTuneJob) -> dict:
    """What the job's run chose and how long it trained (its first eval point to its last step)."""
    m = job.metrics or {}
    hp = job.hyperparameters
    return {
        "job": job.pk,
        "hyperparameters": {
            k: hp.get(k)
            for k in (
                "epochs",
                "learning_rate",
                "lora_r",
                "lora_alpha",
                "target_modules",
                "batch_size",
                "early_stopping_patience",
            )
        },
        "train_rows": m.get("train_rows"),
        "steps_trained": m.get("steps_trained"),
        "steps_planned": m.get("steps"),
        "stopped_early_at_step": m.get("stopped_early_at_step"),
        "best_eval_step": m.get("best_eval_step"),
        "eval_loss": m.get("eval_loss"),
        "train_seconds": m.get("train_seconds"),  # the loop, eval-loss measurements included
        "tokens_per_second": job.tokens_per_second,
        "in_job_heldout_accuracy": (m.get("eval") or {}).get("accuracy"),
    }


def deploy(team: Team, pool: ComputePool, name: str, version: ModelVersion, args: dict) -> Deployment:
    return Deployment.objects.filter(name=name).first() or serving.create_deployment(
        actor=ACTOR, name=name, team=team, version=version, pool=pool, replicas=1, args=args
    )


def ready(deployment: Deployment) -> Replica | None:
    reconcile.reconcile_deployment(deployment.pk)
    return Replica.objects.filter(deployment=deployment, state=ReplicaState.READY).first()


def endpoint(team: Team, name: str, route: dict, price: dict) -> Endpoint:
    found = Endpoint.objects.filter(name=name).first() or serving.create_endpoint(
        actor=ACTOR, name=name, team=team, routes=[{**route, "weight": 100}]
    )
    subject = subjects.find(PriceKind.ENDPOINT, found.name)
    if (
        subject is not None
        and not Price.objects.filter(kind=PriceKind.ENDPOINT, subject_id=subject.id).exists()
    ):
        this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
        set_price(actor=ACTOR, subject=subject, effective_from=this_hour, note="bench-portfolio", **price)
    return found

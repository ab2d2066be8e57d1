"""The thesis, measured in the product: on the demo ticket-routing task, a fine-tuned 135M model against
its base and against a twice larger general model, scored through the platform.

    PORTFOLIO_DATA_DIR=.portfolio-bench-portfolio python -m benchmarks.portfolio.run     (make bench-portfolio)

On this machine's CPU, with real processes: the embedded PostgreSQL and Redis, a node agent (`portfolio
node-agent`, a Celery worker) that runs the fine-tune job and starts the vLLM CPU engines, and the gateway
(uvicorn serving ``portfolio.asgi``). In order:

1. The demo SmolLM2-135M-Instruct (``import_demo_model``) and Gemma 3 270M (its Q4_K_M GGUF parts from the
   package registry, through the GGUF importer) are registered; the demo ticket-routing rows are uploaded as
   a dataset version holding out a quarter of them (20 of 80 rows, ``EVAL_FRACTION``).
2. A LoRA fine-tune job of SmolLM2 on the other 60 rows with the platform's default hyperparameters (no
   value set: ``training.defaults.Hyperparameters.resolved`` chooses them), run by the node agent.
3. Two deployments on the node: SmolLM2 with the job's adapter hot-loaded, and Gemma. Three endpoints:
   the base, the adapter, and Gemma; prices from billing's price book (the demo's token prices for both
   SmolLM2 endpoints, twice them for Gemma, which has twice the parameters).
4. A task with the dataset version's held-out rows as its eval set. The base and the adapter are scored by
   the platform's own endpoint eval runs (``training.evals.runs``: chat completions through the gateway,
   one request at a time, metered to the team; cost per 1,000 requests from the price book). Gemma is the
   base model and has no chat template: it is scored few-shot through ``/v1/completions`` (two examples per
   queue from the training rows), through the same gateway with the same kind of service key, scored and
   priced with the same functions.
5. The cascade (tuned 135M first, escalating to Gemma on low confidence) is an endpoint kind being built
   in parallel (issue 14): ``score_cascade`` is its marked place, and the result says it was not measured.

Writes ``benchmarks/results/portfolio.json`` and prints the table. The data folder must be one of its own
(its name holds "bench"). Takes 15-30 minutes on two busy cores (two engine starts, one training run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from benchmarks.gateway.harness import Processes, free_port, wait_http  # noqa: E402
from benchmarks.portfolio import report  # noqa: E402
from portfolio.accounts.actor import Actor  # noqa: E402
from portfolio.accounts.models import Team  # noqa: E402
from portfolio.billing import subjects  # noqa: E402
from portfolio.billing.choices import PriceKind  # noqa: E402
from portfolio.billing.models import Price  # noqa: E402
from portfolio.billing.pricing import PriceBook  # noqa: E402
from portfolio.billing.services import set_price  # noqa: E402
from portfolio.envparse import database_url  # noqa: E402
from portfolio.registry import services as registry  # noqa: E402
from portfolio.registry.choices import Source, VersionStatus  # noqa: E402
from portfolio.registry.demo_model import MODEL_NAME  # noqa: E402
from portfolio.registry.models import Model, ModelVersion  # noqa: E402
from portfolio.registry.tasks import import_version  # noqa: E402
from serving import processes, reconcile  # noqa: E402
from serving import services as serving  # noqa: E402
from serving.choices import NodeState, PoolKind, ReplicaState  # noqa: E402
from serving.models import ComputePool, Deployment, Endpoint, Node, Replica  # noqa: E402
from training import finetune, ingest  # noqa: E402
from training import services as training  # noqa: E402
from training.choices import JobStatus, TaskKind  # noqa: E402
from training.evals import catalogue, gateway, runs  # noqa: E402
from training.evals.models import EvalSet, Task  # noqa: E402
from training.models import Dataset, DatasetVersion, FineTuneJob  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "portfolio.json"
DEMO_DATA = ROOT / "training" / "demo_data" / "ticket_routing.jsonl"
EVAL_FRACTION = 0.25
NODE = "bench-node"
POOL = "bench-cpu"
SMOL_PRICE = {"input_per_million": Decimal("0.50"), "output_per_million": Decimal("1.50")}
GEMMA_PRICE = {"input_per_million": Decimal("1.00"), "output_per_million": Decimal("3.00")}
SHOTS_PER_LABEL = 2
MAX_TOKENS = 8
INSTRUCTION = "Route each support ticket to one queue: billing, technical, account or shipping."
ENGINE_TIMEOUT = 1500
TRAIN_TIMEOUT = 1800
ACTOR = Actor.for_system("benchmark")


def say(message: str) -> None:
    print(f"[bench-portfolio {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def wait(what: str, check, timeout: float, logs: list[Path], interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    tails = "\n".join(f"--- {p} ---\n{processes.log_tail(p, 60)}" for p in logs if p.exists())
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


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
    env = {
        **os.environ,
        # --threads: the trainer's and engines' threads per process (on cores shared with other work, one
        # thread does not wait on a descheduled sibling at every operation).
        **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}),
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    logs = data / "bench-logs"
    logs.mkdir(exist_ok=True)
    agent_env = {
        **env,
        "PORTFOLIO_DATA_DIR": str(data / "node"),
        "PORTFOLIO_ARTIFACT_CACHE": str(data / "node-cache"),
        "PORTFOLIO_NODE_POOL": POOL,
        "PORTFOLIO_NODE_NAME": NODE,
    }
    procs.start(
        "node-agent",
        [sys.executable, "-m", "portfolio.cli", "node-agent", "--name", NODE, "--concurrency", "1"],
        log=logs / "agent.log",
        cwd=ROOT,
        env=agent_env,
    )
    port = free_port()
    gateway_process = procs.start(
        "gateway",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "portfolio.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        + ["--loop", "uvloop", "--http", "httptools", "--no-access-log"],
        log=logs / "gateway.log",
        cwd=ROOT,
        env={**env, "PORTFOLIO_GATEWAY_REFRESH_MS": "500"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", gateway_process, logs / "gateway.log", timeout=120)
    return url


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


# --- 4. Scoring -----------------------------------------------------------------------------------------
def eval_set(team: Team, version: DatasetVersion) -> EvalSet:
    task = Task.objects.filter(owner_team=team, slug="ticket-routing-bench").first() or catalogue.create_task(
        actor=ACTOR,
        owner_team=team,
        name="Ticket routing (bench)",
        slug="ticket-routing-bench",
        kind=TaskKind.CLASSIFICATION,
    )
    return catalogue.add_eval_set(actor=ACTOR, task=task, dataset_version=version)


def score_chat(name: str, target: Endpoint, evals: EvalSet, note: str = "") -> report.Candidate:
    """An endpoint eval run of the platform, run here (not queued): one request at a time."""
    run = runs.start_run(
        actor=ACTOR,
        task=evals.task,
        eval_set=evals,
        endpoint=target,
        row_limit=1000,
        concurrency=1,
        max_tokens=MAX_TOKENS,
        enqueue=False,
    )
    runs.execute(run.pk)
    run.refresh_from_db()
    if run.status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"eval run of {target.name} {run.status}: {run.status_detail}")
    m = run.metrics
    return report.Candidate(
        name=name,
        endpoint=target.name,
        accuracy=m.get("accuracy"),
        latency_p50_ms=m.get("latency_p50_ms"),
        cost_per_1k_requests=m.get("cost_per_1k_requests"),
        rows=run.rows_total,
        how=f"chat completions, endpoint eval run #{run.pk}",
        note=note,
    )


def score_few_shot(name: str, target: Endpoint, evals: EvalSet, version: DatasetVersion) -> report.Candidate:
    """Few-shot through /v1/completions (the base model has no chat template), through the gateway with a
    service key of the team, scored and priced with the eval runs' own functions."""
    train = [item["row"] for item in training.split_rows(version, "train")]
    shots = report.pick_shots(
        [(row["messages"][-2]["content"], row["messages"][-1]["content"]) for row in train], SHOTS_PER_LABEL
    )
    rows = runs.rows_of(evals, 1000)
    answers = []
    with gateway.client_for(evals.task.owner_team, target.name, "bench-portfolio few-shot") as client:
        for row in rows:
            prompt = report.few_shot_prompt(shots, row["messages"][-2]["content"], INSTRUCTION)
            started = time.monotonic()
            response = client.post(
                "/v1/completions",
                json={
                    "model": target.name,
                    "prompt": prompt,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                    "stop": ["\n"],
                },
            )
            latency = time.monotonic() - started
            if response.status_code != 200:
                raise RuntimeError(f"{target.name} answered {response.status_code}: {response.text[:300]}")
            body = response.json()
            usage = body.get("usage") or {}
            answers.append(
                gateway.Answer(
                    text=body["choices"][0]["text"],
                    latency_s=latency,
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or 0),
                )
            )
    price = PriceBook.load(kinds=[PriceKind.ENDPOINT]).at(PriceKind.ENDPOINT, target.pk, timezone.now())
    m = runs.summarise(TaskKind.CLASSIFICATION, rows, answers, price)
    return report.Candidate(
        name=name,
        endpoint=target.name,
        accuracy=m.get("accuracy"),
        latency_p50_ms=m.get("latency_p50_ms"),
        cost_per_1k_requests=m.get("cost_per_1k_requests"),
        rows=len(rows),
        how=f"/v1/completions, {len(shots)}-shot prompt ({m.get('input_tokens', 0) // max(len(rows), 1)} "
        "input tokens a request)",
    )


def score_cascade(evals: EvalSet) -> dict:
    """PLACE FOR THE CASCADE (issue 14): a cascade endpoint (the tuned 135M first, escalating to Gemma when
    its confidence is under a threshold) is being built in parallel. Once endpoints of that kind exist,
    create one over ``bench-smol-tuned`` and ``bench-gemma`` here, score it with ``score_chat`` (its answers
    come through the same gateway) and add its escalation rate from its usage rows."""
    return {"measured": False, "why": "the cascade endpoint kind is being built in parallel (issue 14)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per process (default: torch's own)"
    )
    args = parser.parse_args()
    data = Path(settings.DATA_DIR).resolve()
    if "bench" not in data.name:
        sys.exit(f"Use a data folder of its own for the benchmark (its name holding 'bench'), not {data}.")
    started = time.monotonic()
    call_command("migrate", "--noinput", verbosity=0)
    call_command("seed_demo")
    team = Team.objects.get(slug="demo")
    smol, gemma = models(team)
    version = dataset_version(team, smol)
    say(f"dataset {version.label}: {version.train_count} training rows, {version.eval_count} held out")
    pool = ComputePool.objects.filter(name=POOL).first() or serving.create_pool(
        actor=ACTOR, name=POOL, kind=PoolKind.CPU
    )
    procs = Processes()
    logs = data / "bench-logs"
    try:
        settings.GATEWAY_INTERNAL_URL = start_platform(procs, data, args.threads)
        joined = timezone.now()
        wait(
            "the node agent",
            lambda: Node.objects.filter(name=NODE, state=NodeState.READY, heartbeat_at__gt=joined).first(),
            180,
            [logs / "agent.log"],
        )
        train_started = time.monotonic()
        job = fine_tune(team, smol, version, pool, logs / "agent.log")
        fine_tune_seconds = round(time.monotonic() - train_started)
        say(f"fine-tune done in {fine_tune_seconds}s: {job.output_version.label}")
        smol_dep = deploy(
            team,
            pool,
            "bench-smol",
            smol,
            {"max_model_len": 2048, "enable_lora": True, "max_loras": 2, "max_lora_rank": 16},
        )
        gemma_dep = deploy(team, pool, "bench-gemma", gemma, {"max_model_len": 2048})
        adapter = smol_dep.adapters.filter(version=job.output_version).first() or serving.add_adapter(
            actor=ACTOR, deployment=smol_dep, adapter=job.output_version, name="bench-router-lora"
        )
        engine_logs = [logs / "agent.log", *(data / "node" / "engines").glob("*/*.log")]
        for dep in (smol_dep, gemma_dep):
            wait(
                f"{dep.name} to be ready", lambda dep=dep: ready(dep), ENGINE_TIMEOUT, engine_logs, interval=5
            )
        say("engines ready")
        base_ep = endpoint(team, "bench-smol-base", {"deployment": smol_dep.name}, SMOL_PRICE)
        tuned_ep = endpoint(
            team, "bench-smol-tuned", {"deployment": smol_dep.name, "adapter": adapter.name}, SMOL_PRICE
        )
        gemma_ep = endpoint(team, "bench-gemma", {"deployment": gemma_dep.name}, GEMMA_PRICE)
        time.sleep(3)  # the gateway's routing table refresh
        evals = eval_set(team, version)
        candidates = []
        for name, target, note in (
            ("smollm2-135m base", base_ep, "zero-shot, the dataset's own system prompt"),
            ("smollm2-135m tuned (LoRA)", tuned_ep, "the adapter of the default-hyperparameter job"),
        ):
            say(f"scoring {name}")
            candidates.append(score_chat(name, target, evals, note))
        say(f"scoring {report.REFERENCE}")
        candidates.append(score_few_shot(report.REFERENCE, gemma_ep, evals, version))
        cascade = score_cascade(evals)
    finally:
        procs.stop_all()
        for engine in processes.engines_on_this_machine(under=data).values():
            processes.stop(engine, grace=15)
    load = os.getloadavg()
    result = report.result(
        candidates,
        context={
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "threads_per_process": args.threads,
                "python": platform.python_version(),
                "load_average_at_end": [round(x, 2) for x in load],
            },
            "task": {
                "dataset": "training/demo_data/ticket_routing.jsonl",
                "rows": version.row_count,
                "train_rows": version.train_count,
                "heldout_rows": version.eval_count,
                "eval_fraction": EVAL_FRACTION,
            },
            # From queued to registered: loading, the loop, saving, the job's own scoring of base and adapter.
            "training": {**training_figures(job), "job_seconds_queued_to_done": fine_tune_seconds},
            "prices_per_million_tokens": {
                "smollm2 endpoints": {k: str(v) for k, v in SMOL_PRICE.items()},
                "gemma endpoint": {k: str(v) for k, v in GEMMA_PRICE.items()},
            },
            "run_seconds": round(time.monotonic() - started),
        },
        cascade=cascade,
    )
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(report.table(candidates))
    print(json.dumps(result["ratios"], indent=2))
    say(f"wrote {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

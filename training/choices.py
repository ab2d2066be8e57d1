from django.db import models


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

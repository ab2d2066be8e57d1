from django.db import models

from portfolio import badges


class Task(models.TextChoices):
    CHAT = "chat", "Chat / instruction following"
    CLASSIFICATION = "classification", "Classification / routing"
    EXTRACTION = "extraction", "Extraction"
    SUMMARIZATION = "summarization", "Summarization"
    CODE = "code", "Code"
    EMBEDDING = "embedding", "Embeddings"
    SPEECH = "speech", "Speech to text (transcription, translation)"
    RERANK = "rerank", "Reranking / scoring (cross-encoder)"
    OTHER = "other", "Other"


class Visibility(models.TextChoices):
    TEAM = "team", "Owner team"
    DEPARTMENT = "department", "Owner team's department"
    ORGANISATION = "organisation", "Whole organisation"


class VersionKind(models.TextChoices):
    BASE = "base", "Base model"
    ADAPTER = "adapter", "LoRA adapter"


class Source(models.TextChoices):
    HUB = "hub", "Hugging Face Hub"
    LOCAL = "local", "Server folder"
    GGUF = "gguf", "GGUF file"
    UPLOAD = "upload", "Upload"
    FINE_TUNE = "fine_tune", "Fine-tune"
    DISTILLATION = "distillation", "Distillation"
    DERIVED = "derived", "Derived from another version"
    MERGE = "merge", "Adapter merged into its base"


@badges.toned("version", ready="ok", importing="warn", failed="danger")
class VersionStatus(models.TextChoices):
    IMPORTING = "importing", "Importing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    ARCHIVED = "archived", "Archived"

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.FAILED, cls.ARCHIVED})


@badges.toned(
    "health",
    ok="ok",
    corrupt="danger",
    labels={"ok": "verified", "corrupt": "corrupt", "unknown": "unverified"},
)
class Health(models.TextChoices):
    UNKNOWN = "unknown", "Not verified yet"
    OK = "ok", "Verified"
    CORRUPT = "corrupt", "Corrupted"


class Family(models.TextChoices):
    """What a base model is built of, which decides its memory, LoRA targets and engine arguments."""

    DENSE = "dense", "Dense decoder"
    MOE = "moe", "Mixture of experts"
    STATE_SPACE = "state_space", "State-space"
    HYBRID = "hybrid", "Hybrid (attention + state-space)"
    VISION_LANGUAGE = "vision_language", "Vision-language"
    SPEECH = "speech", "Speech (encoder-decoder)"

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from portfolio.accounts.models import Team
from portfolio.accounts.scoping import TeamScopedQuerySet
from portfolio.registry.models import Artifact, ModelVersion
from training.choices import DatasetKind, DatasetVersionStatus, EvalStatus, JobStatus, Method

dataset_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{1,79}\Z", "Use 2-80 lower-case letters, digits, dots, dashes or underscores."
)


class DatasetQuerySet(TeamScopedQuerySet):
    pass


class Dataset(models.Model):
    """A named training dataset of one team, in one row shape, with its immutable versions."""

    name = models.CharField(max_length=80, validators=[dataset_name_validator])
    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="datasets")
    kind = models.CharField(max_length=16, choices=DatasetKind.choices, default=DatasetKind.CHAT)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = DatasetQuerySet.as_manager()

    class Meta:
        ordering = ["owner_team__slug", "name"]
        constraints = [
            models.UniqueConstraint(fields=["owner_team", "name"], name="dataset_name_unique_per_team"),
        ]

    def __str__(self) -> str:
        return f"{self.owner_team.slug}/{self.name}"

    @property
    def team(self) -> Team:
        return self.owner_team

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "owner_team": self.owner_team.slug,
            "kind": self.kind,
            "description": self.description,
        }


class DatasetVersionQuerySet(TeamScopedQuerySet):
    team_path = "dataset__owner_team_id"


class DatasetVersion(models.Model):
    """One validated, immutable upload of a dataset: normalized train/eval JSONL in the artifact store."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=DatasetVersionStatus.choices, default=DatasetVersionStatus.READY
    )
    shape = models.CharField(max_length=16, choices=DatasetKind.choices)
    artifact = models.ForeignKey(
        Artifact,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="dataset_versions",
        help_text="train.jsonl, eval.jsonl (normalized rows) and original.jsonl (the upload as sent); none: "
        "archived and its stored files deleted (training.dataset_purge)",
    )
    content_sha256 = models.CharField(
        max_length=64, help_text="sha256 of the normalized rows in upload order, one JSON object per line"
    )
    row_count = models.PositiveIntegerField(help_text="Rows kept: valid, non-empty, duplicates dropped")
    train_count = models.PositiveIntegerField()
    eval_count = models.PositiveIntegerField()
    eval_fraction = models.FloatField()
    split_seed = models.BigIntegerField()
    stats = models.JSONField(default=dict, blank=True, help_text="Token lengths, duplicates, empty lines")
    labels = models.JSONField(
        default=list,
        blank=True,
        help_text="[{label, count, train, eval}] by count: a classification set's labels, or a chat or completion "
        "set's answers when they are classes (stats.stratified_by)",
    )
    tokenizer_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The base version whose tokenizer measured the rows; none: lengths in characters",
    )
    context_length = models.PositiveIntegerField(
        null=True, blank=True, help_text="The context length rows were checked against"
    )
    source_filename = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(help_text="Size of the upload as sent")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = DatasetVersionQuerySet.as_manager()

    class Meta:
        ordering = ["dataset_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="dataset_version_number_unique"),
            # Uploading the same rows again returns the existing version instead of a copy.
            models.UniqueConstraint(
                fields=["dataset", "content_sha256"], name="dataset_version_content_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dataset} v{self.number}"

    @property
    def team(self) -> Team:
        return self.dataset.owner_team

    @property
    def owner_team_id(self) -> int:
        # Lets the gate decide team-scoped actions on a version by its dataset's team.
        return self.dataset.owner_team_id

    @property
    def label(self) -> str:
        return f"{self.dataset.name}:v{self.number}"

    def snapshot(self) -> dict:
        return {
            "dataset": str(self.dataset),
            "number": self.number,
            "status": self.status,
            "shape": self.shape,
            "artifact": self.artifact_id,
            "content_sha256": self.content_sha256,
            "rows": {"total": self.row_count, "train": self.train_count, "eval": self.eval_count},
            "split": {"seed": self.split_seed, "eval_fraction": self.eval_fraction},
            "tokenizer_version": self.tokenizer_version.label if self.tokenizer_version else None,
            "source_filename": self.source_filename,
        }


class DatasetIngestQuerySet(TeamScopedQuerySet):
    team_path = "dataset__owner_team_id"


class DatasetIngest(models.Model):
    """One uploaded file on its way to a dataset version: validated, split and measured by a worker."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="ingests")
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    status_detail = models.TextField(blank=True, help_text="Why it failed, for people")
    problems = models.JSONField(
        default=dict, blank=True, help_text="A refused file: its line-numbered problems (validation.Report)"
    )
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent")
    progress_detail = models.CharField(max_length=200, blank=True)
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(default=0, help_text="Known once the file is validated")
    upload_path = models.CharField(max_length=500, help_text="The stored upload, deleted once ingested")
    source_filename = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField()
    eval_fraction = models.FloatField()
    split_seed = models.BigIntegerField()
    tokenizer_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    version = models.ForeignKey(
        DatasetVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version it made, or the existing one holding the same rows",
    )
    created_version = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    resends = models.PositiveSmallIntegerField(
        default=0, help_text="Times it was started again after its worker died (a redelivery or a resend)"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = DatasetIngestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"ingest #{self.pk} of {self.dataset}"

    @property
    def team(self) -> Team:
        return self.dataset.owner_team

    @property
    def owner_team_id(self) -> int:
        return self.dataset.owner_team_id

    @property
    def is_active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    def snapshot(self) -> dict:
        return {
            "dataset": str(self.dataset),
            "source_filename": self.source_filename,
            "size_bytes": self.size_bytes,
            "split": {"seed": self.split_seed, "eval_fraction": self.eval_fraction},
            "tokenizer_version": self.tokenizer_version.label if self.tokenizer_version else None,
            "status": self.status,
        }


class FineTuneJobQuerySet(TeamScopedQuerySet):
    def holding_gpus(self) -> FineTuneJobQuerySet:
        """Jobs whose GPU claims stand: queued or running ones (a finished job has given its GPUs back)."""
        return self.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exclude(gpu_indices=[])


def keep_teacher_while_asked(collector, field, sub_objs, using) -> None:
    """``on_delete`` of a job's teacher endpoint: refused (``ProtectedError``, which the endpoint's deletion
    turns into a refusal naming the jobs) while a queued or running distillation still asks it; a finished
    job forgets it (``SET_NULL``): the version it registered keeps the teacher's name in its card and metrics.
    Named by the migrations: keep it here."""
    asking = list(sub_objs.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]))
    if asking:
        raise models.ProtectedError("A queued or running distillation asks this endpoint.", set(asking))
    models.SET_NULL(collector, field, sub_objs, using)


class FineTuneJob(models.Model):
    """Fine-tuning of a base version on a dataset version, run on a node of a pool in a child process."""

    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="finetune_jobs")
    base_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="finetune_jobs")
    dataset_version = models.ForeignKey(
        DatasetVersion, on_delete=models.PROTECT, related_name="finetune_jobs"
    )
    target_model = models.ForeignKey(
        "registry.Model",
        on_delete=models.PROTECT,
        related_name="finetune_jobs",
        help_text="The model the result is registered under",
    )
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.LORA)
    # Distillation: stage one asks this endpoint (through the gateway) to answer the dataset's prompts.
    teacher_endpoint = models.ForeignKey(
        "serving.Endpoint", null=True, blank=True, on_delete=keep_teacher_while_asked, related_name="+"
    )
    distilled_dataset_version = models.ForeignKey(
        DatasetVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The teacher's answers (stage one)",
    )
    hyperparameters = models.JSONField(default=dict, help_text="As resolved for the run")
    pool = models.ForeignKey("serving.ComputePool", on_delete=models.PROTECT, related_name="finetune_jobs")
    node = models.ForeignKey(
        "serving.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Like a replica's: the trainer sees only these (CUDA_VISIBLE_DEVICES); kept after the job ends, as a record.
    gpu_indices = models.JSONField(
        default=list, blank=True, help_text="GPUs of its node it holds while queued or running (GPU pools)"
    )
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    status_detail = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempt = models.PositiveIntegerField(default=0)
    pid = models.PositiveIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    tokens_per_second = models.FloatField(default=0)
    loss_curve = models.JSONField(default=list, blank=True, help_text="[[step, train loss], ...]")
    eval_curve = models.JSONField(default=list, blank=True, help_text="[[step, eval loss], ...]")
    log_tail = models.TextField(blank=True)
    checkpoint = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    checkpoint_step = models.PositiveIntegerField(default=0)
    output_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="produced_by"
    )
    metrics = models.JSONField(default=dict, blank=True)
    compute_seconds = models.FloatField(default=0, help_text="Wall time on the node, all attempts")
    cpu_core_seconds = models.FloatField(default=0)
    gpu_seconds = models.FloatField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = FineTuneJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The reaper: running jobs by last heartbeat.
            models.Index(fields=["status", "heartbeat_at"], name="training_job_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"fine-tune #{self.pk} of {self.base_version.label}"

    @property
    def team(self) -> Team:
        return self.owner_team

    @property
    def is_distillation(self) -> bool:
        # A finished distillation whose teacher was deleted since still has the dataset its teacher answered
        # (one that failed before that reads as a fine-tune; the audit row of its start names the teacher).
        return self.teacher_endpoint_id is not None or self.distilled_dataset_version_id is not None

    @property
    def training_data(self) -> DatasetVersion:
        return self.distilled_dataset_version or self.dataset_version

    @property
    def placed_on(self) -> str:
        """Its node and the GPUs it holds there: "gpu-01 (GPU 1)"."""
        name = self.node.name if self.node else "no node"
        return name + (f" (GPU {', '.join(map(str, self.gpu_indices))})" if self.gpu_indices else "")

    @property
    def eta_seconds(self) -> float | None:
        if self.status != JobStatus.RUNNING or not self.step or not self.started_at:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        return elapsed / self.step * max(self.total_steps - self.step, 0)

    def snapshot(self) -> dict:
        return {
            "base_version": self.base_version.label,
            "dataset_version": str(self.dataset_version_id),
            "method": self.method,
            "pool": self.pool.name,
            "gpus": self.gpu_indices,
            "status": self.status,
            "hyperparameters": self.hyperparameters,
            "output_version": self.output_version.label if self.output_version else None,
        }


class EvalRunQuerySet(models.QuerySet):
    def visible_to(self, actor) -> EvalRunQuerySet:
        """Runs of a version the actor sees on a dataset the actor sees: a team's run of a shared base on its
        own private data (its labels, their counts, its confusion matrix) is that team's alone."""
        from portfolio.registry.models import ModelVersion as Version

        return self.filter(
            version__in=Version.objects.visible_to(actor),
            dataset_version__in=DatasetVersion.objects.visible_to(actor),
        )


class EvalRun(models.Model):
    """A version scored on a dataset version's held-out rows."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="eval_runs")
    dataset_version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="eval_runs")
    job = models.ForeignKey(
        FineTuneJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="eval_runs"
    )
    status = models.CharField(max_length=10, choices=EvalStatus.choices, default=EvalStatus.RUNNING)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = EvalRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"eval of {self.version.label} on dataset version {self.dataset_version_id}"

    @property
    def team(self) -> Team:
        return self.version.model.owner_team

    @property
    def headline(self) -> float | None:
        """The score promotion compares: accuracy for label tasks, else exact match."""
        return self.metrics.get("accuracy", self.metrics.get("exact_match"))


# Tasks, eval sets and endpoint eval runs live in their own module; imported here so that Django finds them.
from training.evals.models import EndpointEvalRun, EvalSet, Task  # noqa: E402
from training.merges.models import MergeJob  # noqa: E402

__all__ = [
    "Dataset",
    "DatasetIngest",
    "DatasetVersion",
    "EndpointEvalRun",
    "EvalRun",
    "EvalSet",
    "FineTuneJob",
    "MergeJob",
    "Task",
]

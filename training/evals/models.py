"""Tasks, their eval sets, and eval runs of endpoints (the fine-tune's own ``EvalRun`` of a version is
unchanged: it stays the record promotion compares)."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from portfolio.accounts.models import Team
from portfolio.accounts.scoping import TeamScopedQuerySet
from training.choices import EvalSetSource, JobStatus, TaskKind


class TaskQuerySet(TeamScopedQuerySet):
    pass


class Task(models.Model):
    """What a team wants a model to do (route tickets, extract an order number), in its catalogue."""

    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="tasks")
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=80)
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    description = models.TextField(blank=True)
    # The endpoint that serves the task in production (the portfolio page's row): named by people, through
    # ``portfolio.set_production_endpoint`` (audited), not guessed from the leaderboard.
    production_endpoint = models.ForeignKey(
        "serving.Endpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["owner_team__slug", "slug"]
        constraints = [
            models.UniqueConstraint(fields=["owner_team", "slug"], name="task_slug_unique_per_team")
        ]

    def __str__(self) -> str:
        return f"{self.owner_team.slug}/{self.slug}"

    @property
    def team(self) -> Team:
        return self.owner_team

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "slug": self.slug,
            "kind": self.kind,
            "owner_team": self.owner_team.slug,
            "production_endpoint": self.production_endpoint.name if self.production_endpoint else None,
        }


class EvalSetQuerySet(TeamScopedQuerySet):
    team_path = "task__owner_team_id"


class EvalSet(models.Model):
    """A task's evaluation data: a dataset version's held-out rows, or all its rows."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="eval_sets")
    dataset_version = models.ForeignKey(
        "training.DatasetVersion", on_delete=models.PROTECT, related_name="eval_sets"
    )
    source = models.CharField(max_length=8, choices=EvalSetSource.choices, default=EvalSetSource.EVAL_ROWS)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = EvalSetQuerySet.as_manager()

    class Meta:
        ordering = ["task_id", "-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "dataset_version", "source"], name="eval_set_unique_per_task"
            )
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        which = "held-out rows" if self.source == EvalSetSource.EVAL_ROWS else "all rows"
        return f"{self.dataset_version.label} ({which})"

    @property
    def row_count(self) -> int:
        version = self.dataset_version
        return version.eval_count if self.source == EvalSetSource.EVAL_ROWS else version.row_count

    @property
    def team(self) -> Team:
        return self.task.owner_team

    @property
    def owner_team_id(self) -> int:
        return self.task.owner_team_id

    def snapshot(self) -> dict:
        return {"task": str(self.task), "dataset_version": self.dataset_version_id, "source": self.source}


class EndpointEvalRunQuerySet(TeamScopedQuerySet):
    pass


class EndpointEvalRun(models.Model):
    """An endpoint scored on an eval set, its rows sent through the gateway with a key of the running team
    (the task's), so each call is metered and billed to it."""

    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="endpoint_eval_runs")
    eval_set = models.ForeignKey(EvalSet, on_delete=models.CASCADE, related_name="runs")
    # An endpoint may be deleted later: the run keeps its name and its scores.
    endpoint = models.ForeignKey(
        "serving.Endpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    endpoint_name = models.CharField(max_length=63)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    status_detail = models.TextField(blank=True, help_text="Why it failed or was cancelled, for people")
    cancel_requested = models.BooleanField(default=False)
    row_limit = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(2000)], help_text="Rows sent at most"
    )
    concurrency = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(16)], help_text="Requests in flight"
    )
    max_tokens = models.PositiveIntegerField(
        default=64, validators=[MinValueValidator(1), MaxValueValidator(4096)]
    )
    # Optional: a deployed endpoint the team may call scores each answer against the rubric (1-5 or 0-1).
    judge_endpoint = models.ForeignKey(
        "serving.Endpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    judge_endpoint_name = models.CharField(max_length=63, blank=True)
    rubric = models.TextField(blank=True, max_length=2000, help_text="What the judge scores answers on")
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(default=0)
    # Runs before 2026-12-07 scored their eval set's first rows, later ones rows spread over it (sampling.py):
    # two that scored part of the set each, one way and the other, scored other rows.
    scored_first_rows = models.BooleanField(default=False)
    # What the endpoint routed to (a composite: its configuration) when the worker took the run up
    # (``comparability.measured_now``): a candidate whose routes differ now is not what was measured. None: a
    # run taken up before routes were recorded.
    measured_routes = models.JSONField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    # Per row, in the eval set's order: the prompt and answer (cut short), expected, right or not, the judge's
    # score: the eval set is the team's own test data, kept for the side-by-side comparison of runs.
    answers = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = EndpointEvalRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="training_evalrun_heartbeat")]

    def __str__(self) -> str:
        return f"eval run #{self.pk} of {self.endpoint_name}"

    @property
    def team(self) -> Team:
        return self.owner_team

    @property
    def is_active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def percent(self) -> int | None:
        if self.status == JobStatus.SUCCEEDED:
            return 100
        return min(100, round(100 * self.rows_done / self.rows_total)) if self.rows_total else None

    def snapshot(self) -> dict:
        return {
            "endpoint": self.endpoint_name,
            "eval_set": self.eval_set_id,
            "status": self.status,
            "rows": {"done": self.rows_done, "total": self.rows_total, "limit": self.row_limit},
            "quality": self.metrics.get("quality"),
            "latency_p50_ms": self.metrics.get("latency_p50_ms"),
            "cost_per_1k_requests": self.metrics.get("cost_per_1k_requests"),
            "judge": self.judge_endpoint_name or None,
            "judge_score": self.metrics.get("judge_score"),
        }

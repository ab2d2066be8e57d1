from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts.models import Team
from portfolio.accounts.scoping import TeamScopedQuerySet
from portfolio.registry.models import ModelVersion
from training.choices import JobStatus

IN_FLIGHT = (JobStatus.QUEUED, JobStatus.RUNNING)


class MergeJobQuerySet(TeamScopedQuerySet):
    pass


class MergeJob(models.Model):
    """Merging one adapter into its base (peft ``merge_and_unload``): a full version of the adapter's model."""

    adapter = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="merge_jobs")
    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="merge_jobs")
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    status_detail = models.TextField(blank=True)
    output_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Where its process ran, when that machine is a node of a pool (its compute is billed on that pool).
    node = models.ForeignKey(
        "serving.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    compute_seconds = models.FloatField(default=0, help_text="Wall time of its merge process")
    cpu_core_seconds = models.FloatField(default=0)
    upload = models.JSONField(
        default=dict,
        blank=True,
        help_text="What its process wrote to the artifact store ({blobs, manifest}), deleted if it fails",
    )
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = MergeJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One merge of an adapter at a time: a second press while one runs would only duplicate it.
            models.UniqueConstraint(
                fields=["adapter"], condition=Q(status__in=IN_FLIGHT), name="one_merge_in_flight_per_adapter"
            ),
        ]
        indexes = [
            # The reaper: running merges with an old heartbeat.
            models.Index(fields=["status", "heartbeat_at"], name="training_merge_status"),
        ]

    def __str__(self) -> str:
        return f"merge #{self.pk} of {self.adapter.label}"

    @property
    def team(self) -> Team:
        return self.owner_team

    def snapshot(self) -> dict:
        return {
            "adapter": self.adapter.label,
            "base": self.adapter.base_version.label if self.adapter.base_version else None,
            "status": self.status,
            "status_detail": self.status_detail[:500],
            "output_version": self.output_version.label if self.output_version else None,
        }

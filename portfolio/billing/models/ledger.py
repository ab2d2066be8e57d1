"""The meters' ledger: what serving, the gateway's usage flusher, training and the registry write in,
through billing's services, as plain ids and names (billing imports nothing above it)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from portfolio.billing.choices import ComputeKind


class TokenUsage(models.Model):
    """Tokens per hour, endpoint, serving deployment and calling team: the gateway's usage as billed.

    The usage flusher's rollup rewrites whole hours (late events included), so a row is always the sum of
    its hour's events. Prompt and completion text never reach it.
    """

    hour = models.DateTimeField()
    endpoint_id = models.BigIntegerField(null=True, help_text="Null for the prompt box")
    endpoint = models.CharField(max_length=63)
    owner_team_id = models.BigIntegerField(null=True, help_text="The team that owns the endpoint")
    owner_department_id = models.BigIntegerField(null=True, help_text="The owning team's department then")
    deployment = models.CharField(max_length=63, blank=True)
    team_id = models.BigIntegerField(null=True, help_text="The calling team")
    department_id = models.BigIntegerField(null=True, help_text="The calling team's department then")
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    audio_ms = models.BigIntegerField(
        default=0, help_text="Speech models: milliseconds of audio, priced per second"
    )

    class Meta:
        ordering = ["-hour"]
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "endpoint", "deployment", "team_id"],
                name="one_token_row_per_hour_endpoint_deployment_team",
                nulls_distinct=False,
            )
        ]
        indexes = [
            # A department's statement and spend: its callers' rows of a month.
            models.Index(fields=["department_id", "hour"], name="tokens_department_hour"),
            # The owning team's recovery (credits) and at-cost shares.
            models.Index(fields=["owner_department_id", "hour"], name="tokens_owner_hour"),
            # The hours of a day on which an endpoint's price changes (token_periods).
            models.Index(fields=["endpoint_id", "hour"], name="tokens_endpoint_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.hour:%Y-%m-%d %H}:00 team {self.team_id}"


class TokenDay(models.Model):
    """``TokenUsage`` summed per UTC day: what a month's statements, spend and charts read (a day's rows
    instead of 24 hours' of them). Derived only: whenever the rollup rewrites an hour, the meter rewrites
    its whole day from the hours, in the same transaction. Where an endpoint's price changes in the middle
    of a day, that endpoint's day is read from the hours instead (``token_periods``)."""

    day = models.DateTimeField(help_text="Midnight UTC")
    endpoint_id = models.BigIntegerField(null=True)
    endpoint = models.CharField(max_length=63)
    owner_team_id = models.BigIntegerField(null=True)
    owner_department_id = models.BigIntegerField(null=True)
    deployment = models.CharField(max_length=63, blank=True)
    team_id = models.BigIntegerField(null=True)
    department_id = models.BigIntegerField(null=True)
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    audio_ms = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        constraints = [
            # The columns the meter sums by: a day written twice (two rollups at once) fails, not bills twice.
            models.UniqueConstraint(
                fields=[
                    "day",
                    "endpoint_id",
                    "endpoint",
                    "owner_team_id",
                    "owner_department_id",
                    "deployment",
                    "team_id",
                    "department_id",
                ],
                name="one_token_day_row_per_sum",
                nulls_distinct=False,
            )
        ]
        indexes = [
            models.Index(fields=["department_id", "day"], name="token_days_department_day"),
            models.Index(fields=["owner_department_id", "day"], name="token_days_owner_day"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.day:%Y-%m-%d} team {self.team_id}"


class ComputeInterval(models.Model):
    """Compute a team held on a pool: a replica from start to stop or crash, or a job's run."""

    key = models.CharField(max_length=80, unique=True, help_text="replica:<id>, job:<kind>:<id>:<attempt>")
    kind = models.CharField(max_length=10, choices=ComputeKind.choices)
    team_id = models.BigIntegerField(help_text="The owning team, charged for it")
    department_id = models.BigIntegerField(help_text="The owning team's department then")
    subject = models.CharField(max_length=100, help_text="The deployment's name, or the job's label")
    pool_id = models.BigIntegerField()
    pool = models.CharField(max_length=63)
    gpus = models.DecimalField(
        max_digits=8,
        decimal_places=4,
        default=0,
        help_text="GPUs held: a shared GPU counts by the share claimed",
    )
    cpu_cores = models.PositiveIntegerField(default=0)
    memory_bytes = models.BigIntegerField(default=0)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Empty while it runs")

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            # A department's statement: its intervals that overlap a month.
            models.Index(fields=["department_id", "started_at"], name="compute_department_start"),
            models.Index(fields=["team_id", "started_at"], name="compute_team_start"),
            # Open intervals, for the replica meter's sweep.
            models.Index(fields=["kind"], condition=Q(ended_at__isnull=True), name="compute_open"),
        ]
        constraints = [models.CheckConstraint(condition=Q(gpus__gte=0), name="compute_gpus_not_negative")]

    def __str__(self) -> str:
        return f"{self.key} on {self.pool}"


class StorageDay(models.Model):
    """Artifact bytes a team kept in a store on one day (UTC): the storage meter, written once a day."""

    day = models.DateField()
    team_id = models.BigIntegerField()
    department_id = models.BigIntegerField()
    store = models.CharField(max_length=63)
    bytes = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team_id", "store"], name="one_storage_row_per_day_team_store"
            )
        ]
        indexes = [models.Index(fields=["department_id", "day"], name="storage_department_day")]

    def __str__(self) -> str:
        return f"{self.store} team {self.team_id} on {self.day}"

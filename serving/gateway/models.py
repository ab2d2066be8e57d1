from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.utils import timezone

from portfolio.accounts.models import Team
from portfolio.accounts.scoping import TeamScopedQuerySet


class ApiKeyQuerySet(TeamScopedQuerySet):
    team_path = "team_id"


class ApiKey(models.Model):
    """A team's key for the gateway: only a keyed hash of the secret is kept; limits and budget ride along."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100)
    key_id = models.CharField(
        max_length=16, unique=True, help_text="The public part, shown as slm_<key_id>_…"
    )
    secret_hash = models.CharField(max_length=64)
    # Endpoint names the key may call; empty means every endpoint its team may call (own and shared).
    scopes = ArrayField(models.CharField(max_length=63), default=list, blank=True)
    allowed_ips = ArrayField(
        models.CharField(max_length=49),
        default=list,
        blank=True,
        help_text="CIDR ranges; empty allows any address",
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute")
    monthly_token_budget = models.BigIntegerField(null=True, blank=True)
    monthly_budget = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Money per calendar month, from the price book",
    )
    service = models.BooleanField(default=False, help_text="Created by the platform for a team's jobs")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["team__name", "-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"slm_{self.key_id}_…"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "team": self.team.slug,
            "key_id": self.key_id,
            "scopes": list(self.scopes),
            "allowed_ips": list(self.allowed_ips),
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "monthly_token_budget": self.monthly_token_budget,
            "monthly_budget": str(self.monthly_budget) if self.monthly_budget is not None else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked": self.revoked_at is not None,
        }


class KeyPolicyQuerySet(TeamScopedQuerySet):
    team_path = "team_id"


class KeyPolicy(models.Model):
    """A team's per-key ceilings, set by its owners: what a key its developers create may have at most.

    Each field bounds the key field of the same name; empty means no ceiling. A developer's key takes the
    ceiling when the developer gives no value, and is refused above it. Owners and admins are not bound.
    """

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="key_policy")
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute, at most")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute, at most")
    monthly_token_budget = models.BigIntegerField(
        null=True, blank=True, help_text="Tokens per month, at most"
    )
    monthly_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="Money per calendar month, at most"
    )
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = KeyPolicyQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "key policies"

    def __str__(self) -> str:
        return f"key policy of {self.team}"

    def ceilings(self) -> dict:
        """The ceiling of each limit field of a key, by the key field's name (None: no ceiling)."""
        return {
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "monthly_token_budget": self.monthly_token_budget,
            "monthly_budget": self.monthly_budget,
        }

    def snapshot(self) -> dict:
        ceilings = self.ceilings()
        if ceilings["monthly_budget"] is not None:
            ceilings["monthly_budget"] = str(ceilings["monthly_budget"])
        return {"team": self.team.slug, **ceilings}


class UsageEventQuerySet(TeamScopedQuerySet):
    team_path = "team_id"


class UsageEvent(models.Model):
    """One gateway request, as metadata only: who, which endpoint and version, tokens, timings, outcome.

    The table is partitioned by month of ``at`` (partitions.py, migration 0004): its primary key is
    (id, at) and an event is stored once per (event_id, at), the time a redelivered event keeps.
    """

    event_id = models.CharField(max_length=40, help_text="The request id; makes inserts idempotent")
    at = models.DateTimeField()
    # No index of its own: usage_key_time starts with it.
    api_key = models.ForeignKey(
        ApiKey, null=True, on_delete=models.SET_NULL, related_name="usage", db_index=False
    )
    team_id = models.BigIntegerField(null=True)
    department_id = models.BigIntegerField(null=True)
    endpoint = models.CharField(max_length=63)
    # The composite endpoint (router, cascade, vote) the client called, when this event is one of its hops.
    via = models.CharField(max_length=63, blank=True, default="")
    # For billing's ledger: the endpoint's row (none for the prompt box) and its owners when called.
    endpoint_id = models.BigIntegerField(null=True)
    owner_team_id = models.BigIntegerField(null=True)
    owner_department_id = models.BigIntegerField(null=True)
    deployment = models.CharField(max_length=63, blank=True)
    model_version_id = models.BigIntegerField(null=True)
    adapter = models.CharField(max_length=63, blank=True)
    replica_id = models.BigIntegerField(null=True)
    kind = models.CharField(
        max_length=20, help_text="chat, completion, embedding, rerank, score, transcription, translation"
    )
    stream = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # Speech models: the uploaded audio's duration (read from its header by the gateway), priced per second.
    audio_ms = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True)
    status = models.PositiveSmallIntegerField()
    error = models.CharField(max_length=40, blank=True)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at"]
        indexes = [
            # The usage dashboard and statements: per team / key / endpoint over time.
            models.Index(fields=["team_id", "at"], name="usage_team_time"),
            models.Index(fields=["api_key", "at"], name="usage_key_time"),
            models.Index(fields=["endpoint", "at"], name="usage_endpoint_time"),
            # Time ranges (the rollups, the latest event): events arrive in time order, so a block range
            # index does it at a tiny fraction of a B-tree's size.
            BrinIndex(fields=["at"], name="usage_time"),
        ]
        constraints = [
            # The flusher's inserts skip events already stored (a redelivery keeps its time).
            models.UniqueConstraint(fields=["event_id", "at"], name="usage_event_once"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.status} at {self.at:%Y-%m-%d %H:%M:%S}"


class UsageHourly(models.Model):
    """Hourly rollup of usage events per key, team and endpoint (the source of charts and statements)."""

    hour = models.DateTimeField()
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    team_id = models.BigIntegerField(null=True)
    department_id = models.BigIntegerField(null=True)
    endpoint = models.CharField(max_length=63)
    # The composite endpoint (router, cascade, vote) whose hop these calls were; blank: called by name.
    via = models.CharField(max_length=63, blank=True, default="")
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    audio_ms = models.BigIntegerField(default=0)
    latency_ms_sum = models.BigIntegerField(default=0)
    latency_p50_ms = models.PositiveIntegerField(default=0)
    latency_p95_ms = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=16, decimal_places=6, default=0)

    class Meta:
        ordering = ["-hour"]
        constraints = [
            # Per team too: the prompt box's calls have no key, and each team sees only its own.
            models.UniqueConstraint(
                fields=["hour", "api_key", "team_id", "endpoint", "via"],
                name="one_rollup_per_hour_key_team_endpoint_via",
                nulls_distinct=False,
            ),
        ]
        indexes = [models.Index(fields=["team_id", "hour"], name="rollup_team_hour")]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.hour:%Y-%m-%d %H}:00"

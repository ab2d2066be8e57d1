from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts.models import Department, Team
from portfolio.accounts.scoping import TeamScopedQuerySet
from portfolio.registry.models import ModelVersion
from serving.choices import (
    DeploymentStatus,
    DesiredState,
    EndpointKind,
    NodeState,
    PoolKind,
    ReplicaState,
    RolloutState,
    StickyBy,
    UpdateStrategy,
)

NAME_RULE = "Use 2-63 lower-case letters, digits and dashes."
name_validator = RegexValidator(r"^[a-z0-9][a-z0-9-]{1,62}\Z", NAME_RULE)


class ComputePoolQuerySet(TeamScopedQuerySet):
    """A pool is open to the teams it lists, or to every team when it lists none."""

    team_path = "allowed_teams"

    def visible_to(self, actor) -> ComputePoolQuerySet:
        if actor.is_org_wide:
            return self
        return self.filter(Q(allowed_teams__isnull=True) | Q(allowed_teams__in=actor.team_ids)).distinct()


class ComputePool(models.Model):
    """A set of machines of one kind (GPU or CPU) that teams may deploy and train on."""

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    kind = models.CharField(max_length=3, choices=PoolKind.choices)
    description = models.TextField(blank=True)
    allowed_teams = models.ManyToManyField(
        Team, blank=True, related_name="pools", help_text="Teams that may use the pool; none means every team"
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = ComputePoolQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "allowed_teams": sorted(self.allowed_teams.values_list("slug", flat=True)) if self.pk else [],
        }


class NodeQuerySet(models.QuerySet):
    def visible_to(self, actor) -> NodeQuerySet:
        return self.filter(pool__in=ComputePool.objects.visible_to(actor))


class Node(models.Model):
    """A machine in a pool; its agent consumes the Celery queue ``node.<name>`` and heartbeats."""

    name = models.CharField(max_length=63, unique=True)
    pool = models.ForeignKey(ComputePool, on_delete=models.PROTECT, related_name="nodes")
    state = models.CharField(max_length=10, choices=NodeState.choices, default=NodeState.READY)
    # What an operator had set (cordoned, draining) when the node went silent: restored, not ready, on return.
    state_before_lost = models.CharField(max_length=10, choices=NodeState.choices, blank=True)
    address = models.CharField(max_length=255, help_text="Where engines on this node listen (gateway side)")
    cpu_cores = models.PositiveIntegerField(default=0)
    memory_bytes = models.BigIntegerField(default=0)
    gpus = models.JSONField(default=list, blank=True, help_text="[{index, name, memory_bytes}]")
    agent_version = models.CharField(max_length=40, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["pool__name", "name"]
        indexes = [
            # The lost-node sweep: ready/draining nodes by last heartbeat.
            models.Index(fields=["state", "heartbeat_at"], name="serving_node_heartbeat"),
        ]

    def __str__(self) -> str:
        return self.name

    def snapshot(self) -> dict:
        return {"name": self.name, "pool": self.pool.name, "state": self.state, "address": self.address}


class DeploymentQuerySet(TeamScopedQuerySet):
    pass


class Deployment(models.Model):
    """A base model version served on a pool by vLLM replicas, with the adapters they hot-load."""

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="deployments")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    pool = models.ForeignKey(ComputePool, on_delete=models.PROTECT, related_name="deployments")
    replicas = models.PositiveIntegerField(default=1, help_text="Desired number of replicas")
    engine_args = models.JSONField(default=dict, blank=True)
    # Bumped by a restart or a version change: replicas of older generations are replaced, one by one.
    generation = models.PositiveIntegerField(default=1)
    status = models.CharField(
        max_length=10, choices=DeploymentStatus.choices, default=DeploymentStatus.PENDING
    )
    status_detail = models.TextField(blank=True)
    # How a rolling change replaces replicas: a surge replica first, or (no room for one) in place.
    update_strategy = models.CharField(
        max_length=10, choices=UpdateStrategy.choices, default=UpdateStrategy.SURGE
    )
    # The generation a person chose to replace in place when no room was left for a surge replica.
    in_place_generation = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def team(self) -> Team:
        return self.owner_team

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "version": self.version.label,
            "pool": self.pool.name,
            "replicas": self.replicas,
            "engine_args": self.engine_args,
            "generation": self.generation,
            "adapters": sorted(self.adapters.values_list("name", flat=True)) if self.pk else [],
        }


class DeploymentAdapter(models.Model):
    """An adapter version served by a deployment's replicas under its own model name."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="adapters")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployed_as_adapter")
    name = models.CharField(max_length=63, validators=[name_validator])
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["deployment__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "name"], name="adapter_name_unique_per_deployment"),
            models.UniqueConstraint(fields=["deployment", "version"], name="adapter_once_per_deployment"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name}/{self.name}"


class Replica(models.Model):
    """One engine process of a deployment on a node."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    node = models.ForeignKey(Node, null=True, on_delete=models.SET_NULL, related_name="replicas")
    generation = models.PositiveIntegerField()
    desired = models.CharField(max_length=10, choices=DesiredState.choices, default=DesiredState.RUNNING)
    state = models.CharField(max_length=10, choices=ReplicaState.choices, default=ReplicaState.PENDING)
    state_detail = models.TextField(blank=True)
    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    gpu_indices = models.JSONField(default=list, blank=True)
    # What the scheduler reserved on the node for this replica (bytes of RAM or per GPU, cores).
    reserved_memory_bytes = models.BigIntegerField(default=0)
    reserved_cores = models.PositiveIntegerField(default=0)
    # The cores a CPU replica's engine binds its threads to, and its KV cache (part of the reserved RAM).
    cpu_ids = models.JSONField(default=list, blank=True)
    kv_cache_bytes = models.BigIntegerField(default=0)
    restarts = models.PositiveIntegerField(default=0)
    next_start_at = models.DateTimeField(null=True, blank=True)
    last_health_at = models.DateTimeField(null=True, blank=True)
    log_tail = models.TextField(blank=True)
    loaded_adapters = models.JSONField(default=list, blank=True)  # loads the engine confirmed: routed to
    adapter_versions = models.JSONField(default=dict, blank=True)  # {name: version id} the engine may hold
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # When its agent began draining it (serving/draining.py): its engine stops once drained or out of time.
    drain_started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment__name", "id"]
        indexes = [
            # The gateway's routing table: ready replicas of a deployment.
            models.Index(fields=["deployment", "state"], name="serving_replica_routing"),
            # A node agent's work list.
            models.Index(fields=["node", "desired"], name="serving_replica_node"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name}#{self.pk}"

    @property
    def base_url(self) -> str:
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"  # IPv6 bracketed

    @staticmethod
    def serving(via: str = "") -> Q:
        """Ready and still wanted (routed to; not draining): on replicas, or ``via`` a relation to them."""
        return Q(**{f"{via}state": ReplicaState.READY, f"{via}desired": DesiredState.RUNNING})


class DeploymentEvent(models.Model):
    """One entry of a deployment's timeline: scheduled, started, ready, crashed, restarted, scaled."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    replica = models.ForeignKey(
        Replica, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=32)
    message = models.TextField()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["deployment", "-at"], name="serving_event_timeline")]

    def __str__(self) -> str:
        return f"{self.deployment.name} {self.kind}"


class EndpointQuerySet(TeamScopedQuerySet):
    def callable_by(self, team: Team) -> EndpointQuerySet:
        """What ``team``'s keys may call: its own endpoints and those shared with it, its department or the
        organisation (the rule the gateway applies in memory, ``access.may_call``)."""
        shared = EndpointShare.objects.filter(
            Q(team=team) | Q(department_id=team.department_id) | Q(organisation=True)
        ).values("endpoint_id")
        return self.filter(Q(owner_team=team) | Q(pk__in=shared))


class Endpoint(models.Model):
    """The stable name clients pass as ``model``; routes by weight to deployments or their adapters."""

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="endpoints")
    description = models.TextField(blank=True)
    fallback = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Each completion is billed, and admission reserves for all of them: a cap keeps one call's reservation
    # (and its load on the replicas) in proportion. The gateway also applies PORTFOLIO_GATEWAY_MAX_N.
    max_n = models.PositiveSmallIntegerField(
        default=8,
        validators=[MinValueValidator(1), MaxValueValidator(128)],
        help_text="Most completions per prompt one request may ask for (n, best_of)",
    )
    # Sticky A/B: the gateway picks the route by a stable hash of the key id or of this header's value over
    # the weights, so that one client keeps seeing one variant (a request without the header: random).
    sticky_by = models.CharField(max_length=10, choices=StickyBy.choices, default=StickyBy.NONE)
    sticky_header = models.CharField(
        max_length=64, blank=True, help_text="The request header whose value picks the variant (lower case)"
    )
    # A composite kind (router, cascade, vote) answers by calling plain endpoints of the same team, named in
    # ``config`` (validated by serving/services/composite.py); a plain endpoint routes by weight.
    kind = models.CharField(max_length=10, choices=EndpointKind.choices, default=EndpointKind.PLAIN)
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def team(self) -> Team:
        return self.owner_team

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "fallback": self.fallback.name if self.fallback else None,
            "max_n": self.max_n,
            "sticky_by": self.sticky_by,
            "sticky_header": self.sticky_header,
            "kind": self.kind,
            "config": self.config,
            "routes": self.route_list(),
            "shares": sorted(share.target for share in self.shares.select_related("team", "department"))
            if self.pk
            else [],
        }

    def route_list(self, routes: list[EndpointRoute] | None = None) -> list[dict]:
        """The routes as the audit trail and the API show them (``routes``: read already, a page's at once)."""
        if not self.pk:
            return []
        return [
            {
                "deployment": r.deployment.name,
                "adapter": r.adapter.name if r.adapter else None,
                "weight": r.weight,
            }
            for r in (self.routes.select_related("deployment", "adapter") if routes is None else routes)
        ]


class EndpointRoute(models.Model):
    """One weighted target of an endpoint, listed once (rollouts key routes by it): base model or adapter."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="routes")
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="routes")
    adapter = models.ForeignKey(
        DeploymentAdapter, null=True, blank=True, on_delete=models.PROTECT, related_name="routes"
    )
    weight = models.PositiveIntegerField(default=100, validators=[MinValueValidator(0)])

    class Meta:
        ordering = ["endpoint__name", "-weight", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "deployment", "adapter"], nulls_distinct=False, name="endpoint_route_once"
            )
        ]

    def __str__(self) -> str:
        return (
            f"{self.endpoint.name} -> {self.deployment.name}{'/' + self.adapter.name if self.adapter else ''}"
        )


class EndpointShare(models.Model):
    """One grant of an endpoint to callers outside its owning team: a team, a department, or everyone."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="shares")
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="endpoint_shares"
    )
    department = models.ForeignKey(
        Department, null=True, blank=True, on_delete=models.CASCADE, related_name="endpoint_shares"
    )
    organisation = models.BooleanField(default=False, help_text="Shared with every team of the organisation")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["endpoint__name", "-organisation", "department__name", "team__name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(team__isnull=False, department__isnull=True, organisation=False)
                    | Q(team__isnull=True, department__isnull=False, organisation=False)
                    | Q(team__isnull=True, department__isnull=True, organisation=True)
                ),
                name="endpoint_share_one_target",
            ),
            models.UniqueConstraint(
                fields=["endpoint", "team"], condition=Q(team__isnull=False), name="endpoint_share_team_once"
            ),
            models.UniqueConstraint(
                fields=["endpoint", "department"],
                condition=Q(department__isnull=False),
                name="endpoint_share_department_once",
            ),
            models.UniqueConstraint(
                fields=["endpoint"], condition=Q(organisation=True), name="endpoint_share_organisation_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint.name} -> {self.target}"

    @property
    def kind(self) -> str:
        return "organisation" if self.organisation else "department" if self.department_id else "team"

    @property
    def label(self) -> str:
        """For people: "team Support AI", "department Legal (CC-200)", "the organisation"."""
        if self.team is not None:
            return f"team {self.team.name}"
        if self.department is not None:
            return f"department {self.department}"
        return "the organisation"

    @property
    def target(self) -> str:
        """``team:<slug>``, ``department:<cost center>`` or ``organisation``: what the audit trail keeps."""
        if self.team is not None:
            return f"team:{self.team.slug}"
        if self.department is not None:
            return f"department:{self.department.cost_center}"
        return "organisation"


class Rollout(models.Model):
    """An endpoint's route target tried as a canary, then promoted or rolled back (serving/rollouts.py)."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="rollouts")
    # The candidate, by name as usage events name what answered (a deployment, and one of its adapters).
    deployment = models.CharField(max_length=63)
    adapter = models.CharField(max_length=63, blank=True)
    baseline = models.JSONField(default=list, help_text="The routes before the canary (route_list)")
    canary_percent = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(50)]
    )
    window_seconds = models.PositiveIntegerField(
        default=600, validators=[MinValueValidator(60), MaxValueValidator(86_400)]
    )
    min_requests = models.PositiveIntegerField(default=20)
    max_error_rate_increase = models.FloatField(
        default=0.02, help_text="Canary's error rate minus baseline's"
    )
    max_latency_ratio = models.FloatField(default=1.5, help_text="Canary's p95 latency over baseline's")
    # Optional: a judge endpoint scores a sample of the canary's answers (serving/rollout_judge.py).
    judge_endpoint = models.ForeignKey(
        Endpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="judged_rollouts"
    )
    judge_endpoint_name = models.CharField(max_length=63, blank=True)
    judge_rubric = models.TextField(blank=True, help_text="What the judge scores the canary's answers on")
    judge_fraction = models.FloatField(
        default=0.0, help_text="Share of canary requests matched by a judged sample"
    )
    min_judge_score = models.FloatField(null=True, blank=True, help_text="Judge's mean score (0-1) needed")
    min_judge_samples = models.PositiveIntegerField(default=5)
    judged = models.JSONField(default=dict, blank=True, help_text="The judge's tally so far (Judged.as_dict)")
    state = models.CharField(max_length=12, choices=RolloutState.choices, default=RolloutState.CANARY)
    reason = models.TextField(blank=True)
    figures = models.JSONField(default=dict, blank=True, help_text="The last check's baseline and canary")
    steps = models.JSONField(default=list, blank=True, help_text="[{at, kind, reason}]: the timeline")
    started_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField()
    checked_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint"], condition=Q(state="canary"), name="one_active_rollout_per_endpoint"
            ),
        ]
        indexes = [models.Index(fields=["state"], name="serving_rollout_state")]

    def __str__(self) -> str:
        return f"{self.endpoint.name} -> {self.target}"

    @property
    def team(self) -> Team:
        return self.endpoint.owner_team

    @property
    def target(self) -> str:
        return f"{self.deployment}/{self.adapter}" if self.adapter else self.deployment

    @property
    def active(self) -> bool:
        return self.state == RolloutState.CANARY

    def snapshot(self) -> dict:
        return {
            "endpoint": self.endpoint.name,
            "candidate": self.target,
            "canary_percent": self.canary_percent,
            "window_seconds": self.window_seconds,
            "min_requests": self.min_requests,
            "max_error_rate_increase": self.max_error_rate_increase,
            "max_latency_ratio": self.max_latency_ratio,
            "judge": self.judge_endpoint_name,
            "judge_rubric": self.judge_rubric,
            "judge_fraction": self.judge_fraction,
            "min_judge_score": self.min_judge_score,
            "min_judge_samples": self.min_judge_samples,
            "state": self.state,
            "reason": self.reason,
        }

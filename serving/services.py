"""Every serving change goes through here, with its audit row in the same transaction; the reconcile
that acts on it is enqueued on commit."""

from __future__ import annotations

import re
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from portfolio.registry.choices import Task, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving import engine_args, scheduler
from serving.capacity import pool_capacity
from serving.choices import NodeState, PoolKind
from serving.models import (
    ComputePool,
    Deployment,
    DeploymentAdapter,
    DeploymentEvent,
    Endpoint,
    EndpointRoute,
    Node,
)


def _check_name(name: str, field: str = "name") -> str:
    from django.core.exceptions import ValidationError

    from serving.models import name_validator

    try:
        name_validator(name)
    except ValidationError as exc:
        raise Invalid(f"{field}: {exc.messages[0]}") from None
    return name


def _after_commit_reconcile(deployment_id: int) -> None:
    from serving.tasks import reconcile_deployment_task

    transaction.on_commit(lambda: reconcile_deployment_task.delay(deployment_id))


# --- Pools and nodes -------------------------------------------------------------------------------
@transaction.atomic
def create_pool(
    *,
    actor: Actor,
    name: str,
    kind: str,
    description: str = "",
    teams: list[Team] | None = None,
    gpu_hour_rate: Decimal = Decimal("0"),
    cpu_core_hour_rate: Decimal = Decimal("0"),
) -> ComputePool:
    gate.require(actor, "pool.manage")
    if kind not in PoolKind.values:
        raise Invalid(f"kind: choose {' or '.join(PoolKind.values)}.")
    pool = ComputePool(
        name=_check_name(name),
        kind=kind,
        description=description,
        gpu_hour_rate=gpu_hour_rate,
        cpu_core_hour_rate=cpu_core_hour_rate,
    )
    try:
        with transaction.atomic():
            pool.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"A pool named {name!r} already exists.") from None
    if teams:
        pool.allowed_teams.set(teams)
    audit.record(actor, "pool.create", pool, after=pool.snapshot())
    return pool


@transaction.atomic
def update_pool(
    *,
    actor: Actor,
    pool: ComputePool,
    description: str,
    teams: list[Team],
    gpu_hour_rate: Decimal,
    cpu_core_hour_rate: Decimal,
) -> ComputePool:
    gate.require(actor, "pool.manage")
    before = pool.snapshot()
    pool.description, pool.gpu_hour_rate, pool.cpu_core_hour_rate = (
        description,
        gpu_hour_rate,
        cpu_core_hour_rate,
    )
    pool.save(update_fields=["description", "gpu_hour_rate", "cpu_core_hour_rate"])
    pool.allowed_teams.set(teams)
    audit.record(actor, "pool.update", pool, before=before, after=pool.snapshot())
    return pool


@transaction.atomic
def set_node_state(*, actor: Actor, node: Node, state: str) -> Node:
    """Cordon (no new replicas), drain (replicas move elsewhere first) or make ready again."""
    gate.require(actor, "pool.manage")
    if state not in (NodeState.READY, NodeState.CORDONED, NodeState.DRAINING):
        raise Invalid("state: a node can be made ready, cordoned or drained.")
    if node.state == NodeState.LOST:
        raise Conflict(f"{node.name} is lost; it becomes ready again when its agent reports back.")
    before = node.snapshot()
    node.state = state
    node.save(update_fields=["state"])
    action: dict[str, str] = {
        NodeState.READY: "node.uncordon",
        NodeState.CORDONED: "node.cordon",
        NodeState.DRAINING: "node.drain",
    }
    audit.record(actor, action[state], node, before=before, after=node.snapshot())
    for deployment_id in node.replicas.values_list("deployment_id", flat=True).distinct():
        _after_commit_reconcile(deployment_id)
    return node


# --- Deployments -----------------------------------------------------------------------------------
def _preflight(version: ModelVersion, pool: ComputePool, args: dict, adapter_parameters: int = 0) -> None:
    """Refuse a deployment that could not get even one replica now, saying why."""
    estimate = scheduler.estimate(
        pool_kind=pool.kind,
        parameter_count=version.parameter_count or 0,
        shape=version.shape,
        args=args,
        adapter_parameters=adapter_parameters,
    )
    try:
        scheduler.place(estimate, pool_capacity(pool), pool_kind=pool.kind, args=args)
    except scheduler.Unschedulable as exc:
        raise Conflict(f"Unschedulable on {pool.name}: {exc}", code="unschedulable") from None


def _fits_model(version: ModelVersion, args: dict) -> None:
    """Refuse engine arguments the model itself cannot honour (vLLM would only fail at start-up)."""
    if version.context_length and args["max_model_len"] > version.context_length:
        raise Invalid(
            f"engine_args.max_model_len: {args['max_model_len']} exceeds the context length of "
            f"{version.label} ({version.context_length} tokens)."
        )
    if version.model.task == Task.EMBEDDING and args["enable_lora"]:
        raise Invalid(
            "engine_args.enable_lora: adapters are served on chat and completion models, not on an "
            "embedding model."
        )


# --- What a team may use --------------------------------------------------------------------------
# Who acts is checked by the gate; what a deployment (or a training job) uses is checked against the team
# that owns it. Otherwise a member of two teams could put one team's deployment on a pool only the other
# may use, or serve the other team's private model as the first team's, since they see both.
def require_pool_open_to(team: Team, pool: ComputePool) -> None:
    """A pool open to some teams only (``allowed_teams``) takes work of those teams, whoever asks."""
    if pool.allowed_teams.exists() and not pool.allowed_teams.filter(pk=team.pk).exists():
        raise Invalid(
            f"pool: {pool.name} is not open to {team.name}; choose a pool open to the team, or ask a platform "
            "admin to open this one to it.",
            fields={"pool": [f"Not open to {team.name}."]},
        )


def require_usable_by(team: Team, version: ModelVersion, field: str = "version") -> None:
    """``version`` is one ``team`` may serve or train: shared with it, not merely seen by the actor."""
    if not ModelVersion.objects.shared_with_team(team).filter(pk=version.pk).exists():
        raise Invalid(
            f"{field}: {version.label} is not shared with {team.name}; it may use its own models and those "
            "shared with its department or the organisation.",
            fields={field: [f"Not shared with {team.name}."]},
        )


def _deployable(actor: Actor, version: ModelVersion) -> ModelVersion:
    version = gate.get_visible(actor, ModelVersion, pk=version.pk)
    if version.kind != VersionKind.BASE:
        raise Invalid("version: deploy a base version; adapters are added to a deployment of their base.")
    if version.status != VersionStatus.READY or version.artifact is None:
        raise Conflict(f"{version.label} is {version.status}; only a ready version can be deployed.")
    return version


@transaction.atomic
def create_deployment(
    *,
    actor: Actor,
    name: str,
    team: Team,
    version: ModelVersion,
    pool: ComputePool,
    replicas: int = 1,
    args: dict | None = None,
    store_prompts: bool = False,
) -> Deployment:
    gate.require(actor, "deployment.manage", team)
    pool = gate.get_visible(actor, ComputePool, pk=pool.pk)
    version = _deployable(actor, version)
    require_pool_open_to(team, pool)
    require_usable_by(team, version)
    if not 0 <= replicas <= 64:
        raise Invalid("replicas: between 0 and 64.")
    resolved = engine_args.validate(args or {}, pool.kind)
    _fits_model(version, resolved)
    if replicas:
        _preflight(version, pool, resolved)
    deployment = Deployment(
        name=_check_name(name),
        owner_team=team,
        version=version,
        pool=pool,
        replicas=replicas,
        engine_args=args or {},
        store_prompts=store_prompts,
        created_by=actor.user,
    )
    try:
        with transaction.atomic():
            deployment.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"A deployment named {name!r} already exists.") from None
    audit.record(actor, "deployment.create", deployment, after=deployment.snapshot())
    DeploymentEvent.objects.create(
        deployment=deployment,
        kind="created",
        message=f"Created by {actor.label}: {replicas} replica(s) of {version.label}.",
    )
    _after_commit_reconcile(deployment.pk)
    return deployment


def _locked(deployment: Deployment) -> Deployment:
    return (
        Deployment.objects.select_for_update()
        .select_related("version", "pool", "owner_team")
        .get(pk=deployment.pk)
    )


@transaction.atomic
def scale(*, actor: Actor, deployment: Deployment, replicas: int) -> Deployment:
    gate.require(actor, "deployment.manage", deployment)
    deployment = _locked(deployment)
    if not 0 <= replicas <= 64:
        raise Invalid("replicas: between 0 and 64.")
    if replicas > deployment.replicas:
        require_pool_open_to(deployment.owner_team, deployment.pool)  # closed to the team since: no new ones
    before = deployment.snapshot()
    deployment.replicas, deployment.updated_at = replicas, timezone.now()
    deployment.save(update_fields=["replicas", "updated_at"])
    action = "deployment.stop" if replicas == 0 else "deployment.scale"
    audit.record(actor, action, deployment, before=before, after=deployment.snapshot())
    DeploymentEvent.objects.create(
        deployment=deployment, kind="scaled", message=f"Desired replicas: {replicas}."
    )
    _after_commit_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def restart(
    *, actor: Actor, deployment: Deployment, version: ModelVersion | None = None, args: dict | None = None
) -> Deployment:
    """A rolling restart, optionally to another version or engine arguments: each new replica is ready
    before an old one stops."""
    gate.require(actor, "deployment.manage", deployment)
    deployment = _locked(deployment)
    before = deployment.snapshot()
    if version is not None and version.pk != deployment.version_id:
        version = _deployable(actor, version)
        require_usable_by(deployment.owner_team, version)
        if deployment.adapters.exclude(version__base_version=version).exists():
            raise Conflict(
                "Its adapters were trained on the current base; remove them before changing version."
            )
        deployment.version = version
    if args is not None:
        deployment.engine_args = args
    _fits_model(deployment.version, engine_args.validate(deployment.engine_args, deployment.pool.kind))
    deployment.generation += 1
    deployment.updated_at = timezone.now()
    deployment.save(update_fields=["version", "engine_args", "generation", "updated_at"])
    action = (
        "deployment.update"
        if before["version"] != deployment.version.label or args is not None
        else "deployment.restart"
    )
    audit.record(actor, action, deployment, before=before, after=deployment.snapshot())
    DeploymentEvent.objects.create(
        deployment=deployment,
        kind="rollout",
        message=f"Rolling to generation {deployment.generation} ({deployment.version.label}).",
    )
    _after_commit_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def add_adapter(
    *, actor: Actor, deployment: Deployment, adapter: ModelVersion, name: str = ""
) -> DeploymentAdapter:
    """Serve an adapter of the deployment's base: running replicas hot-load it without a restart."""
    gate.require(actor, "deployment.manage", deployment)
    deployment = _locked(deployment)
    adapter = gate.get_visible(actor, ModelVersion, pk=adapter.pk)
    require_usable_by(deployment.owner_team, adapter, "adapter")
    if adapter.kind != VersionKind.ADAPTER or adapter.base_version_id != deployment.version_id:
        raise Invalid(f"{adapter.label} is not an adapter of {deployment.version.label}.")
    if adapter.status != VersionStatus.READY:
        raise Conflict(f"{adapter.label} is {adapter.status}.")
    if deployment.version.model.task == Task.EMBEDDING:
        raise Invalid("Adapters are served on chat and completion models, not on an embedding model.")
    args = engine_args.validate(deployment.engine_args, deployment.pool.kind)
    rank = (adapter.metrics.get("adapter") or {}).get("r")
    if rank and rank > args["max_lora_rank"]:
        raise Invalid(
            f"{adapter.label} has rank {rank}; the deployment allows up to max_lora_rank={args['max_lora_rank']}."
        )
    # Model names may hold dots and underscores, which deployment-scoped names do not.
    default = re.sub(r"[^a-z0-9-]+", "-", f"{deployment.name}-{adapter.model.name}-v{adapter.number}")
    name = _check_name(name or default[:63].rstrip("-"))
    before = deployment.snapshot()
    try:
        with transaction.atomic():
            attached = DeploymentAdapter.objects.create(deployment=deployment, version=adapter, name=name)
    except IntegrityError:
        raise Conflict(
            f"{adapter.label} (or the name {name!r}) is already served by {deployment.name}."
        ) from None
    if not args["enable_lora"]:
        # Hot-loading needs an engine started with LoRA on: roll the replicas once with it enabled.
        deployment.engine_args = {**deployment.engine_args, "enable_lora": True}
        deployment.generation += 1
        deployment.save(update_fields=["engine_args", "generation"])
        DeploymentEvent.objects.create(
            deployment=deployment,
            kind="rollout",
            message="Enabling LoRA serving: rolling restart with --enable-lora.",
        )
    audit.record(actor, "deployment.adapter_add", deployment, before=before, after=deployment.snapshot())
    DeploymentEvent.objects.create(
        deployment=deployment, kind="adapter_added", message=f"Adapter {name} ({adapter.label}) added."
    )
    _after_commit_reconcile(deployment.pk)
    _poke_nodes(deployment)
    return attached


@transaction.atomic
def remove_adapter(*, actor: Actor, attached: DeploymentAdapter) -> None:
    deployment = attached.deployment
    gate.require(actor, "deployment.manage", deployment)
    if attached.routes.exists():
        raise Conflict(
            f"Endpoint(s) {', '.join(r.endpoint.name for r in attached.routes.all())} route to {attached.name}."
        )
    before = deployment.snapshot()
    attached.delete()
    audit.record(actor, "deployment.adapter_remove", deployment, before=before, after=deployment.snapshot())
    DeploymentEvent.objects.create(
        deployment=deployment, kind="adapter_removed", message=f"Adapter {attached.name} removed."
    )
    _poke_nodes(deployment)


def _poke_nodes(deployment: Deployment) -> None:
    from serving.tasks import poke_node

    names = set(deployment.replica_set.exclude(node=None).values_list("node__name", flat=True))

    def poke() -> None:
        for name in names:
            poke_node(name)

    transaction.on_commit(poke)


@transaction.atomic
def delete_deployment(*, actor: Actor, deployment: Deployment) -> None:
    gate.require(actor, "deployment.manage", deployment)
    deployment = _locked(deployment)
    if deployment.replicas or deployment.replica_set.exists():
        raise Conflict(
            "Stop the deployment (scale to 0) and wait for its replicas to stop before deleting it."
        )
    if deployment.routes.exists():
        raise Conflict("Endpoints still route to this deployment.")
    audit.record(actor, "deployment.delete", deployment, before=deployment.snapshot())
    deployment.delete()


# --- Endpoints -------------------------------------------------------------------------------------
def _routes(
    actor: Actor, team: Team, routes: list[dict]
) -> list[tuple[Deployment, DeploymentAdapter | None, int]]:
    if not routes:
        raise Invalid("routes: an endpoint needs at least one route.")
    resolved = []
    for index, route in enumerate(routes):
        deployment = Deployment.objects.visible_to(actor).filter(name=route.get("deployment")).first()
        if deployment is None:
            raise Invalid(
                f"routes[{index}].deployment: no deployment {route.get('deployment')!r} visible to you."
            )
        if deployment.owner_team_id != team.pk:
            raise Invalid(f"routes[{index}]: an endpoint routes to its own team's deployments only.")
        adapter = None
        if route.get("adapter"):
            adapter = deployment.adapters.filter(name=route["adapter"]).first()
            if adapter is None:
                raise Invalid(
                    f"routes[{index}].adapter: {deployment.name} serves no adapter {route['adapter']!r}."
                )
        weight = route.get("weight", 100)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 10_000:
            raise Invalid(f"routes[{index}].weight: a whole number 0..10000.")
        resolved.append((deployment, adapter, weight))
    if not any(weight for _, _, weight in resolved):
        raise Invalid("routes: at least one route needs a weight above 0.")
    return resolved


def _fallback(actor: Actor, team: Team, fallback: Endpoint | None) -> Endpoint | None:
    """The fallback of one of ``team``'s endpoints: an endpoint of the same team. The gateway follows a
    fallback with the caller's key and bills it to the caller's team, so another team's endpoint (one the
    actor merely sees, as a viewer there) would hand that team's models to this team's keys."""
    if fallback is None:
        return None
    fallback = gate.get_visible(actor, Endpoint, pk=fallback.pk)
    if fallback.owner_team_id != team.pk:
        raise Invalid(
            f"fallback: {fallback.name} belongs to another team; an endpoint falls back to an endpoint of its "
            f"own team ({team.name}) only.",
            fields={"fallback": [f"Choose an endpoint of {team.name}."]},
        )
    return fallback


MAX_N_DEFAULT, MAX_N_CEILING = 8, 128  # as Endpoint.max_n's default and validators


def _check_max_n(value: int) -> int:
    # Each completion is reserved for and billed: the cap bounds what one call can hold of a budget.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_N_CEILING:
        raise Invalid(
            f"max_n: between 1 and {MAX_N_CEILING} completions per prompt.",
            fields={"max_n": [f"Between 1 and {MAX_N_CEILING}."]},
        )
    return value


@transaction.atomic
def create_endpoint(
    *,
    actor: Actor,
    name: str,
    team: Team,
    routes: list[dict],
    description: str = "",
    fallback: Endpoint | None = None,
    max_n: int = MAX_N_DEFAULT,
) -> Endpoint:
    gate.require(actor, "deployment.manage", team)
    resolved = _routes(actor, team, routes)
    fallback = _fallback(actor, team, fallback)
    endpoint = Endpoint(
        name=_check_name(name),
        owner_team=team,
        description=description,
        fallback=fallback,
        max_n=_check_max_n(max_n),
    )
    try:
        with transaction.atomic():
            endpoint.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"An endpoint named {name!r} already exists.") from None
    for deployment, adapter, weight in resolved:
        EndpointRoute.objects.create(endpoint=endpoint, deployment=deployment, adapter=adapter, weight=weight)
    audit.record(actor, "endpoint.create", endpoint, after=endpoint.snapshot())
    return endpoint


@transaction.atomic
def set_routes(
    *,
    actor: Actor,
    endpoint: Endpoint,
    routes: list[dict],
    fallback: Endpoint | None = None,
    max_n: int | None = None,
) -> Endpoint:
    """Change an endpoint's weights (canary, A/B), fallback and completions cap (``None``: unchanged);
    audited with before and after."""
    gate.require(actor, "deployment.manage", endpoint)
    endpoint = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
    resolved = _routes(actor, endpoint.owner_team, routes)
    fallback = _fallback(actor, endpoint.owner_team, fallback)
    if fallback is not None:
        chain: set[int] = {endpoint.pk}
        current: Endpoint | None = fallback
        while current is not None:
            if current.pk in chain:
                raise Invalid("fallback: that would make a fallback loop.")
            chain.add(current.pk)
            current = current.fallback
    before = endpoint.snapshot()
    endpoint.routes.all().delete()
    for deployment, adapter, weight in resolved:
        EndpointRoute.objects.create(endpoint=endpoint, deployment=deployment, adapter=adapter, weight=weight)
    endpoint.fallback = fallback
    if max_n is not None:
        endpoint.max_n = _check_max_n(max_n)
    endpoint.save(update_fields=["fallback", "max_n"])
    audit.record(actor, "endpoint.routes", endpoint, before=before, after=endpoint.snapshot())
    return endpoint


@transaction.atomic
def delete_endpoint(*, actor: Actor, endpoint: Endpoint) -> None:
    gate.require(actor, "deployment.manage", endpoint)
    audit.record(actor, "endpoint.delete", endpoint, before=endpoint.snapshot())
    endpoint.delete()

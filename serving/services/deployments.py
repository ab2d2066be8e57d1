"""Deployments: created after a preflight, scaled, restarted (rolling), given adapters, deleted once stopped."""

from __future__ import annotations

import re

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.billing import budgets
from portfolio.errors import Conflict, Invalid, NotFound
from portfolio.registry.choices import Task, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving import adapter_checks, engine_args, scheduler
from serving.capacity import pool_capacity
from serving.choices import DesiredState, ReplicaState, RolloutState, UpdateStrategy
from serving.models import ComputePool, Deployment, DeploymentAdapter, DeploymentEvent, Endpoint, Rollout
from serving.reconcile import adapter_parameters, surges
from serving.services import composite
from serving.services.route_kinds import require_one_kind
from serving.services.shared import _after_commit_reconcile, _check_name
from serving.services.sharing import require_pool_open_to, require_usable_by


def _preflight(
    version: ModelVersion,
    pool: ComputePool,
    args: dict,
    adapters: tuple[int, ...] = (),
    *,
    exclude_replica_ids: set[int] | None = None,
) -> None:
    """Refuse a deployment that could not get even one replica now, saying why (``exclude_replica_ids``: a
    restart's own replicas, whose room counts as free: its new replicas replace them)."""
    estimate = scheduler.estimate(
        pool_kind=pool.kind,
        parameter_count=version.parameter_count or 0,
        shape=version.shape,
        args=args,
        adapters=adapters,
        facts=version.architecture_facts,
    )
    try:
        capacity = pool_capacity(pool, exclude_replica_ids=exclude_replica_ids)
        scheduler.place(estimate, capacity, pool_kind=pool.kind, args=args)
    except scheduler.Unschedulable as exc:
        raise Conflict(f"Unschedulable on {pool.name}: {exc}", code="unschedulable") from None


def _fits_model(version: ModelVersion, args: dict) -> None:
    """Refuse engine arguments the model itself cannot honour (vLLM would only fail at start-up)."""
    if version.context_length and args["max_model_len"] > version.context_length:
        raise Invalid(
            f"engine_args.max_model_len: {args['max_model_len']} exceeds the context length of "
            f"{version.label} ({version.context_length} tokens)."
        )
    heads = int((version.shape or {}).get("num_attention_heads") or 0)
    tensor_parallel = args.get("tensor_parallel_size", 1)
    if heads and heads % tensor_parallel:
        raise Invalid(
            f"engine_args.tensor_parallel_size: {tensor_parallel} does not divide {version.label}'s "
            f"{heads} attention heads (vLLM refuses to start it); use a divisor of {heads}."
        )
    if version.model.task == Task.EMBEDDING and args["enable_lora"]:
        raise Invalid(
            "engine_args.enable_lora: adapters are served on chat and completion models, not on an "
            "embedding model."
        )


def _fits_adapters(deployment: Deployment, args: dict) -> None:
    """Refuse engine arguments its adapters cannot be loaded with: its replicas would fail to start, again."""
    for attached in deployment.adapters.select_related("version__model").order_by("name"):
        rank = adapter_checks.rank(attached.version)
        if rank and rank > args["max_lora_rank"]:
            raise Invalid(
                f"engine_args.max_lora_rank: {args['max_lora_rank']} is below the rank of its adapter "
                f"{attached.name} ({attached.version.label}, rank {rank}); remove the adapter first."
            )


def _lock_version(version: ModelVersion, *others: int) -> None:
    """Lock the version's row under a lock archive_version's waits for, so that it is not archived between a
    check of its status here and this transaction's commit (nor this deployment missed by the archive's check).
    Taken before the deployment's row. ``others``: a restart's current version, locked with it in id order,
    so two restarts swapping versions do not wait on each other. Only versions the actor sees are locked
    (``_visible`` first): a row of another team's is neither waited on nor revealed by a wait. A no-key lock:
    rows referring to the version (an ingest measuring with it) check its key at commit, not waited on while
    this transaction waits for the audit chain they hold (a deadlock, as ``finetune.start_job``'s was)."""
    ids = sorted({version.pk, *others})
    locked = ModelVersion.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("pk")
    list(locked.values_list("pk"))


def _visible(actor: Actor, version: ModelVersion) -> ModelVersion:
    return gate.get_visible(actor, ModelVersion, pk=version.pk)


def _deployable(actor: Actor, version: ModelVersion) -> ModelVersion:
    _lock_version(_visible(actor, version))
    version = ModelVersion.objects.get(pk=version.pk)  # its status read under the lock
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
    update_strategy: str = UpdateStrategy.SURGE,
) -> Deployment:
    gate.require(actor, "deployment.manage", team)
    pool = gate.get_visible(actor, ComputePool, pk=pool.pk)
    version = _deployable(actor, version)
    require_pool_open_to(team, pool)
    require_usable_by(team, version)
    if not 0 <= replicas <= 64:
        raise Invalid("replicas: between 0 and 64.")
    _check_strategy(update_strategy)
    resolved = engine_args.validate(args or {}, pool.kind, version.family or engine_args.DEFAULT_FAMILY)
    _fits_model(version, resolved)
    if replicas:
        _preflight(version, pool, resolved)
        budgets.check_can_spend(team)  # replicas cost compute: not past a hard-limited budget
    deployment = Deployment(
        name=_check_name(name),
        owner_team=team,
        version=version,
        pool=pool,
        replicas=replicas,
        engine_args=args or {},
        update_strategy=update_strategy,
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
    """The deployment's row as stored now, locked; NotFound (as the caller's lookup would now say) when a
    delete committed since that lookup, or while this waited for the lock (see services/locks.py)."""
    found = (
        Deployment.objects.select_for_update(of=("self",))
        .select_related("version", "pool", "owner_team")
        .filter(pk=deployment.pk)
        .first()
    )
    if found is None:
        raise NotFound("Deployment not found.")
    return found


def _may_start_replicas(deployment: Deployment) -> None:
    """What new replicas need, as at creation: the pool still open to the team, the model and every adapter
    (each new engine loads them all) still shared with it, and no hard-limited budget used up."""
    require_pool_open_to(deployment.owner_team, deployment.pool)
    require_usable_by(deployment.owner_team, deployment.version)
    for adapter in deployment.adapters.select_related("version__model"):
        require_usable_by(deployment.owner_team, adapter.version, "adapter")
    budgets.check_can_spend(deployment.owner_team)


def _preflight_deployment(deployment: Deployment, args: dict, *, own_room: bool = False) -> None:
    """The preflight of an existing deployment's new replicas, its adapters counted as the reconcile counts
    them: without it, a replica that fits nowhere is found only after the old ones have stopped."""
    adapters = adapter_parameters(deployment)
    own = set(deployment.replica_set.values_list("pk", flat=True)) if own_room else None
    _preflight(deployment.version, deployment.pool, args, adapters, exclude_replica_ids=own)


def _not_watched(deployment: Deployment, change: str) -> None:
    """Refuse to change what a deployment serves (its version, its engine arguments) while a rollout under
    way watches it: as the candidate, the figures would be the old one's and the new one promoted on them;
    in the baseline, the canary would be compared with something else halfway. A plain restart serves the
    same and is let through. Called under the deployment's lock, which start_rollout takes of a candidate."""
    rollout = (
        Rollout.objects.filter(state=RolloutState.CANARY)
        .filter(
            Q(deployment=deployment.name)
            | Q(endpoint__routes__deployment=deployment, endpoint__routes__weight__gt=0)
        )
        .select_related("endpoint")
        .order_by("pk")
        .first()
    )
    if rollout is not None:
        role = "the candidate" if rollout.deployment == deployment.name else "in the baseline"
        raise Conflict(
            f"{deployment.name} is {role} of the rollout under way on {rollout.endpoint.name}: abort the "
            f"rollout first (or let it finish), then {change}.",
            code="rollout_under_way",
        )


@transaction.atomic
def scale(*, actor: Actor, deployment: Deployment, replicas: int) -> Deployment:
    gate.require(actor, "deployment.manage", deployment)
    deployment = _locked(deployment)
    if not 0 <= replicas <= 64:
        raise Invalid("replicas: between 0 and 64.")
    if replicas > deployment.replicas:
        _may_start_replicas(deployment)
    if replicas and not deployment.replicas:  # from none: nothing shows its arguments fit any node
        _preflight_deployment(deployment, engine_args.for_deployment(deployment))
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
    before an old one stops. New replicas are new compute: refused, as a scale-up is, on a pool closed to
    the team, for a model no longer shared with it, or past a hard-limited budget."""
    gate.require(actor, "deployment.manage", deployment)
    if version is not None:
        # The team's lock first, as set_routes takes it: no composite is pointed at its endpoints meanwhile.
        composite.lock_calls_of(deployment.owner_team_id)
        _lock_version(_visible(actor, version), deployment.version_id)  # before the deployment's row
    deployment = _locked(deployment)
    changes = (version is not None and version.pk != deployment.version_id) or (
        args is not None and args != deployment.engine_args
    )
    if changes:
        _not_watched(deployment, "change its version or engine arguments")
    before = deployment.snapshot()
    if version is not None and version.pk != deployment.version_id:
        version = _deployable(actor, version)
        require_usable_by(deployment.owner_team, version)
        if deployment.adapters.exclude(version__base_version=version).exists():
            raise Conflict(
                "Its adapters were trained on the current base; remove them before changing version."
            )
        deployment.version = version
        for endpoint in Endpoint.objects.filter(routes__deployment=deployment).distinct():
            others = Deployment.objects.filter(routes__endpoint=endpoint).exclude(pk=deployment.pk).distinct()
            require_one_kind([deployment, *others.select_related("version__model")], "version", endpoint.name)
            composite.require_text_for_callers(endpoint, [deployment])  # a vote, router or cascade's hop
    if args is not None:
        deployment.engine_args = args
    resolved = engine_args.for_deployment(deployment)
    _fits_model(deployment.version, resolved)
    if args is not None:
        _fits_adapters(deployment, resolved)
    if deployment.replicas:
        _may_start_replicas(deployment)  # a rolling restart starts new replicas, maybe larger ones
        if changes:  # they replace its own: their room counts as free
            _preflight_deployment(deployment, resolved, own_room=True)
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


def _check_strategy(strategy: str) -> None:
    if strategy not in UpdateStrategy.values:
        raise Invalid(f"update_strategy: one of {', '.join(UpdateStrategy.values)}.")


@transaction.atomic
def set_update_strategy(*, actor: Actor, deployment: Deployment, strategy: str) -> Deployment:
    """How the deployment's rolling changes replace replicas: ``surge`` (a new replica first, needs room for
    one more) or ``replace`` (in place: one old replica stops, then its successor starts)."""
    gate.require(actor, "deployment.manage", deployment)
    deployment = _locked(deployment)
    _check_strategy(strategy)
    if strategy == deployment.update_strategy:
        return deployment
    before = {"update_strategy": deployment.update_strategy}
    deployment.update_strategy, deployment.updated_at = strategy, timezone.now()
    deployment.save(update_fields=["update_strategy", "updated_at"])
    audit.record(
        actor, "deployment.update_strategy", deployment, before=before, after={"update_strategy": strategy}
    )
    DeploymentEvent.objects.create(
        deployment=deployment,
        kind="update_strategy",
        message=f"Update strategy: {UpdateStrategy(strategy).label}.",
    )
    _after_commit_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def replace_in_place(*, actor: Actor, deployment: Deployment) -> Deployment:
    """Finish the rolling change under way without a surge replica: one old replica stops, then its successor
    starts in the room it leaves, one at a time (a Kubernetes rollout with maxSurge 0). For this change only;
    the next one surges again, unless the deployment's update strategy is ``replace``."""
    gate.require(actor, "deployment.manage", deployment)
    deployment = _locked(deployment)
    old = deployment.replica_set.filter(desired=DesiredState.RUNNING).exclude(
        generation=deployment.generation
    )
    if not old.exists():
        raise Conflict("No rolling change is under way: every running replica is of the current generation.")
    if not surges(deployment):
        raise Conflict(f"{deployment.name} already replaces its replicas in place.")
    deployment.in_place_generation = deployment.generation
    deployment.updated_at = timezone.now()
    deployment.save(update_fields=["in_place_generation", "updated_at"])
    audit.record(
        actor,
        "deployment.replace_in_place",
        deployment,
        after={"generation": deployment.generation, "old_replicas": old.count()},
    )
    DeploymentEvent.objects.create(
        deployment=deployment,
        kind="rollout",
        message=f"Replacing in place (generation {deployment.generation}): one old replica stops, then its "
        "successor starts where it ran.",
    )
    _after_commit_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def add_adapter(
    *, actor: Actor, deployment: Deployment, adapter: ModelVersion, name: str = ""
) -> DeploymentAdapter:
    """Serve an adapter of the deployment's base: running replicas hot-load it without a restart. A replica
    with it is larger: refused (its row rolled back) when no node could hold one, as a restart would be."""
    gate.require(actor, "deployment.manage", deployment)
    _lock_version(_visible(actor, adapter))  # before the deployment's row (see _lock_version)
    deployment = _locked(deployment)
    adapter = ModelVersion.objects.get(pk=adapter.pk)  # its status read under the lock
    require_usable_by(deployment.owner_team, adapter, "adapter")
    if adapter.kind != VersionKind.ADAPTER or adapter.base_version_id != deployment.version_id:
        raise Invalid(f"{adapter.label} is not an adapter of {deployment.version.label}.")
    if adapter.status != VersionStatus.READY:
        raise Conflict(f"{adapter.label} is {adapter.status}.")
    if deployment.version.model.task == Task.EMBEDDING:
        raise Invalid("Adapters are served on chat and completion models, not on an embedding model.")
    args = engine_args.for_deployment(deployment)
    adapter_checks.require_servable(adapter, args["max_lora_rank"])  # what its engines would refuse
    if not args["enable_lora"]:
        _not_watched(deployment, "add the adapter (it turns LoRA on: every replica restarts)")
    if not args["enable_lora"] and deployment.replicas:
        _may_start_replicas(deployment)  # turning LoRA on rolls every replica: new ones start
    # Model names may hold dots and underscores, which deployment-scoped names do not.
    default = re.sub(r"[^a-z0-9-]+", "-", f"{deployment.name}-{adapter.model.name}-v{adapter.number}")
    name = _check_name(name or default[:63].rstrip("-"))
    if name == deployment.name:  # vLLM refuses an adapter named like its base: every engine would exit
        raise Invalid(f"name: {name!r} is the deployment's own model name; name the adapter otherwise.")
    _not_still_loaded(deployment, name)
    before = deployment.snapshot()
    try:
        with transaction.atomic():
            attached = DeploymentAdapter.objects.create(deployment=deployment, version=adapter, name=name)
    except IntegrityError:
        raise Conflict(
            f"{adapter.label} (or the name {name!r}) is already served by {deployment.name}."
        ) from None
    if not args["enable_lora"]:  # hot-loading needs an engine started with LoRA on
        deployment.engine_args = {**deployment.engine_args, "enable_lora": True}
    if deployment.replicas:  # a replica now holds the adapter too (and LoRA's slots, when this turns it on)
        _preflight_deployment(deployment, engine_args.for_deployment(deployment), own_room=True)
    if not args["enable_lora"]:  # roll the replicas once with it enabled
        deployment.generation += 1
        deployment.save(update_fields=["engine_args", "generation"])
        DeploymentEvent.objects.create(
            deployment=deployment,
            kind="rollout",
            message="Enabling LoRA serving: rolling restart with --enable-lora.",
        )
    # The snapshot lists adapters by name: say which version (maybe another team's, shared) is served as it.
    after = {**deployment.snapshot(), "adapter": {"name": name, "version": adapter.label}}
    audit.record(actor, "deployment.adapter_add", deployment, before=before, after=after)
    DeploymentEvent.objects.create(
        deployment=deployment, kind="adapter_added", message=f"Adapter {name} ({adapter.label}) added."
    )
    _after_commit_reconcile(deployment.pk)
    _poke_nodes(deployment)
    return attached


def _not_still_loaded(deployment: Deployment, name: str) -> None:
    """Refuse a name removed whose replicas have not unloaded it yet (loaded, or a load asked whose answer
    may not have come: ``adapter_versions``): the engine would go on answering it with the old version's
    weights until the agent reloads it. Only replicas running an engine count: one pending, in back-off,
    stopped or failed has none, and its next start loads the deployment's adapters as they are then."""
    if deployment.adapters.filter(name=name).exists():
        return  # still served: the create below refuses it as already served
    held = Q(loaded_adapters__contains=[name]) | Q(adapter_versions__has_key=name)
    if deployment.replica_set.filter(held, state__in=ReplicaState.engine_running()).exists():
        raise Conflict(
            f"The adapter named {name!r} was removed from {deployment.name} and its replicas have not unloaded "
            "it yet; try again in a few seconds, or choose another name."
        )


@transaction.atomic
def remove_adapter(*, actor: Actor, attached: DeploymentAdapter) -> None:
    gate.require(actor, "deployment.manage", attached.deployment)
    # Under the deployment's lock, which a route edit naming it also takes: no route is added meanwhile. One
    # removed since the caller looked it up is refused as the routes refuse an adapter never served.
    deployment = _locked(attached.deployment)
    found = deployment.adapters.select_related("version__model").filter(pk=attached.pk).first()
    if found is None:
        raise Invalid(f"{deployment.name} serves no adapter {attached.name!r}.")
    attached = found
    if attached.routes.exists():
        raise Conflict(
            f"Endpoint(s) {', '.join(r.endpoint.name for r in attached.routes.all())} route to {attached.name}."
        )
    before = {**deployment.snapshot(), "adapter": {"name": attached.name, "version": attached.version.label}}
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

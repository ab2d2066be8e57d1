"""REST for pools, nodes, deployments and their replicas, adapters, events and logs (endpoints and their
shares: api_endpoints.py; rollouts: api_rollouts.py)."""

from datetime import datetime
from typing import Any

from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.models import Team
from portfolio.errors import Invalid
from portfolio.registry.models import ModelVersion
from serving import adapter_holding, services
from serving.capacity import node_usage, nodes_usage
from serving.choices import PoolKind
from serving.models import ComputePool, Deployment, DeploymentAdapter, Node
from serving.services.pools import MAX_DESCRIPTION as MAX_POOL_DESCRIPTION

router = Router(tags=["serving"])


class PoolOut(Schema):
    id: int
    name: str
    kind: str
    description: str
    allowed_teams: list[str]

    @staticmethod
    def resolve_allowed_teams(obj) -> list[str]:
        return sorted(t.slug for t in obj.allowed_teams.all())


class PoolIn(Schema):
    name: str = Field(max_length=100)
    kind: PoolKind
    description: str = Field("", max_length=MAX_POOL_DESCRIPTION)
    allowed_team_ids: list[int] = Field([], max_length=1000)


def _pool_manager(context) -> bool:
    """Whether the caller manages pools (platform admins): only they see where engines listen."""
    actor = getattr((context or {}).get("request"), "auth", None)
    return actor is not None and gate.can(actor, "pool.manage")


class NodeOut(Schema):
    id: int
    name: str
    pool: str = Field(alias="pool.name")
    state: str
    address: str | None = Field(None, description="Where its engines listen: shown to pool managers only")
    cpu_cores: int
    memory_bytes: int
    gpus: list[dict[str, Any]]
    heartbeat_at: datetime | None
    usage: dict[str, Any] = {}

    @staticmethod
    def resolve_usage(obj, context) -> dict[str, Any]:
        # One capacity read for a whole page of nodes, whatever its number of nodes and pools: what a node has
        # free is its own, so the nodes the caller sees are read together, once a request (the pools page reads
        # the same every 5 s); a node not among them (made meanwhile) is read alone.
        request = (context or {}).get("request")
        actor = getattr(request, "auth", None)
        if actor is None:
            return node_usage(obj)
        read: dict[int, dict] | None = request.__dict__.get("_node_usage")
        if read is None:
            read = request.__dict__["_node_usage"] = nodes_usage(list(gate.visible(actor, Node)))
        return read.get(obj.pk) or node_usage(obj)

    @staticmethod
    def resolve_address(obj, context) -> str | None:
        return obj.address if _pool_manager(context) else None


class NodeStateIn(Schema):
    state: str = Field(description="ready, cordoned or draining")


class ReplicaOut(Schema):
    id: int
    node: str | None = Field(None, alias="node.name")
    generation: int
    desired: str
    state: str
    state_detail: str
    # Where the engine listens and runs: for pool managers only (null for everyone else).
    host: str | None = Field(None, description="Shown to pool managers only")
    port: int | None = Field(None, description="Shown to pool managers only")
    pid: int | None = Field(None, description="Shown to pool managers only")
    gpu_indices: list[int]
    restarts: int
    last_health_at: datetime | None
    loaded_adapters: list[str] = Field(
        alias="served_adapters",  # serving.adapter_holding
        description="The adapters it serves: loaded at the version attached now (one being reloaded is not)",
    )

    @staticmethod
    def resolve_host(obj, context) -> str | None:
        return obj.host if _pool_manager(context) else None

    @staticmethod
    def resolve_port(obj, context) -> int | None:
        return obj.port if _pool_manager(context) else None

    @staticmethod
    def resolve_pid(obj, context) -> int | None:
        return obj.pid if _pool_manager(context) else None


class AdapterOut(Schema):
    id: int
    name: str
    version_id: int
    version: str = Field(alias="version.label")


class DeploymentOut(Schema):
    id: int
    name: str
    owner_team_id: int
    version_id: int
    version: str = Field(alias="version.label")
    pool: str = Field(alias="pool.name")
    replicas: int
    engine_args: dict[str, Any]
    generation: int
    update_strategy: str
    status: str
    status_detail: str
    created_at: datetime


class DeploymentDetail(DeploymentOut):
    replica_set: list[ReplicaOut]
    adapters: list[AdapterOut]

    @staticmethod
    def resolve_replica_set(obj):
        replicas = list(obj.replica_set.select_related("node"))
        attached = dict(obj.adapters.values_list("name", "version_id"))
        for replica in replicas:
            replica.served_adapters = adapter_holding.shown(replica, attached)[0]
        return replicas

    @staticmethod
    def resolve_adapters(obj):
        return list(obj.adapters.select_related("version__model"))


class DeploymentIn(Schema):
    name: str
    team_id: int
    version_id: int
    pool: str
    replicas: int = 1
    engine_args: dict[str, Any] = {}
    update_strategy: str = Field(
        "surge", description="surge or replace: how rolling changes replace replicas"
    )


class ScaleIn(Schema):
    replicas: int


class UpdateStrategyIn(Schema):
    update_strategy: str = Field(description="surge (a new replica first) or replace (in place)")


class RestartIn(Schema):
    version_id: int | None = None
    engine_args: dict[str, Any] | None = None


class AdapterIn(Schema):
    version_id: int
    name: str = ""


class EventOut(Schema):
    at: datetime
    kind: str
    message: str
    replica_id: int | None


# --- Pools and nodes -------------------------------------------------------------------------------
@router.get("/pools", response=list[PoolOut])
@paginate(PageNumberPagination, page_size=50)
def list_pools(request):
    return gate.visible(request.auth, ComputePool).prefetch_related("allowed_teams").order_by("name", "id")


@router.post("/pools", response={201: PoolOut})
def create_pool(request, payload: PoolIn):
    gate.require(request.auth, "pool.manage")  # before the teams named are looked up
    teams = list(Team.objects.filter(pk__in=payload.allowed_team_ids))
    data = payload.dict(exclude={"allowed_team_ids"})
    return Status(201, services.create_pool(actor=request.auth, teams=teams, **data))


@router.get("/nodes", response=list[NodeOut])
@paginate(PageNumberPagination, page_size=100)
def list_nodes(request, pool: str = ""):
    nodes = gate.visible(request.auth, Node).select_related("pool")
    if pool:
        nodes = nodes.filter(pool__name=pool)
    return nodes.order_by("pool__name", "name", "id")


@router.post("/nodes/{node}/state", response=NodeOut)
def set_node_state(request, node: str, payload: NodeStateIn):
    node_row = gate.get_visible(request.auth, Node, name=node)
    return services.set_node_state(actor=request.auth, node=node_row, state=payload.state)


# --- Deployments -----------------------------------------------------------------------------------
def _deployment(request, name: str) -> Deployment:
    return gate.get_visible(request.auth, Deployment, name=name)


@router.get("/deployments", response=list[DeploymentOut])
@paginate(PageNumberPagination, page_size=50)
def list_deployments(request, team_id: int | None = None, status: str = ""):
    deployments = gate.visible(request.auth, Deployment).select_related("version__model", "pool")
    if team_id is not None:
        deployments = deployments.filter(owner_team_id=team_id)
    if status:
        deployments = deployments.filter(status=status)
    return deployments.order_by("name", "id")


@router.post("/deployments", response={201: DeploymentDetail})
def create_deployment(request, payload: DeploymentIn):
    actor = request.auth
    team = gate.get_visible(actor, Team, pk=payload.team_id)
    version = gate.get_visible(actor, ModelVersion, pk=payload.version_id)
    pool = gate.get_visible(actor, ComputePool, name=payload.pool)
    deployment = services.create_deployment(
        actor=actor,
        name=payload.name,
        team=team,
        version=version,
        pool=pool,
        replicas=payload.replicas,
        args=payload.engine_args,
        update_strategy=payload.update_strategy[:16],
    )
    return Status(201, deployment)


@router.get("/deployments/{deployment}", response=DeploymentDetail)
def get_deployment(request, deployment: str):
    return _deployment(request, deployment)


@router.post("/deployments/{deployment}/scale", response=DeploymentDetail)
def scale(request, deployment: str, payload: ScaleIn):
    return services.scale(
        actor=request.auth, deployment=_deployment(request, deployment), replicas=payload.replicas
    )


@router.post("/deployments/{deployment}/restart", response=DeploymentDetail)
def restart(request, deployment: str, payload: RestartIn):
    """A rolling restart; with `version_id` a rolling update to another version."""
    version = (
        gate.get_visible(request.auth, ModelVersion, pk=payload.version_id) if payload.version_id else None
    )
    return services.restart(
        actor=request.auth,
        deployment=_deployment(request, deployment),
        version=version,
        args=payload.engine_args,
    )


@router.post("/deployments/{deployment}/update-strategy", response=DeploymentDetail)
def update_strategy(request, deployment: str, payload: UpdateStrategyIn):
    """How the deployment's rolling changes replace replicas: `surge` or `replace` (in place)."""
    return services.set_update_strategy(
        actor=request.auth,
        deployment=_deployment(request, deployment),
        strategy=payload.update_strategy[:16],
    )


@router.post("/deployments/{deployment}/replace-in-place", response=DeploymentDetail)
def replace_in_place(request, deployment: str):
    """The rolling change under way goes on without a surge replica (no room for one): one old replica
    stops, then its successor starts."""
    return services.replace_in_place(actor=request.auth, deployment=_deployment(request, deployment))


@router.delete("/deployments/{deployment}", response={204: None})
def delete_deployment(request, deployment: str):
    services.delete_deployment(actor=request.auth, deployment=_deployment(request, deployment))
    return Status(204, None)


@router.post("/deployments/{deployment}/adapters", response={201: AdapterOut})
def add_adapter(request, deployment: str, payload: AdapterIn):
    target = _deployment(request, deployment)
    adapter = gate.get_visible(request.auth, ModelVersion, pk=payload.version_id)
    return Status(
        201, services.add_adapter(actor=request.auth, deployment=target, adapter=adapter, name=payload.name)
    )


@router.delete("/deployments/{deployment}/adapters/{adapter}", response={204: None})
def remove_adapter(request, deployment: str, adapter: str):
    target = _deployment(request, deployment)
    gate.require(request.auth, "deployment.manage", target)
    attached = DeploymentAdapter.objects.filter(deployment=target, name=adapter).first()
    if attached is None:
        raise Invalid(f"{target.name} serves no adapter {adapter!r}.")
    services.remove_adapter(actor=request.auth, attached=attached)
    return Status(204, None)


@router.get("/deployments/{deployment}/events", response=list[EventOut])
@paginate(PageNumberPagination, page_size=100)
def list_events(request, deployment: str):
    return _deployment(request, deployment).events.order_by("-at", "-id")


@router.get("/deployments/{deployment}/logs", response=dict[str, Any])
def replica_logs(request, deployment: str):
    """The last lines of each replica's engine log (as last reported by its node agent)."""
    target = _deployment(request, deployment)
    gate.require(request.auth, "deployment.manage", target)
    return {str(r.pk): r.log_tail for r in target.replica_set.all()}

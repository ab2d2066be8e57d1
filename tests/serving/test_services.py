"""Serving through its service functions, on real PostgreSQL: audited changes, reconciles that place, replace
and stop replicas, and the permission gate in front of all of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus, Visibility
from portfolio.registry.models import Artifact, ModelVersion
from serving import engine_args, reconcile, scheduler, services
from serving.choices import DeploymentStatus, DesiredState, NodeState, PoolKind, ReplicaState
from serving.models import Deployment, DeploymentEvent, Node, Replica
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

GIB = 1024**3
SMOLLM2_SHAPE = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "head_dim": 64,
}


@pytest.fixture
def admin(org):
    return actor_for(org["admin"])


@pytest.fixture
def owner(org):
    return actor_for(org["owner"])


@pytest.fixture
def pool(admin):
    return services.create_pool(actor=admin, name="cpu-pool", kind=PoolKind.CPU)


def add_node(pool, name: str, *, memory_bytes: int = 24 * GIB) -> Node:
    return Node.objects.create(
        name=name,
        pool=pool,
        cpu_cores=2,
        memory_bytes=memory_bytes,
        state=NodeState.READY,
        heartbeat_at=timezone.now(),
        address="127.0.0.1",
    )


@pytest.fixture
def node(pool):
    return add_node(pool, "cpu-01")


@pytest.fixture
def artifact():
    return Artifact.objects.create(
        id="a" * 64, store_uri="file:///store/a", size_bytes=269_060_232, file_count=1, files=[]
    )


@pytest.fixture
def base_version(org, team, artifact):
    model = registry.create_model(actor=actor_for(org["engineer"]), name="smollm2-135m", owner_team=team)
    return ModelVersion.objects.create(
        model=model,
        number=1,
        kind=VersionKind.BASE,
        source=Source.LOCAL,
        artifact=artifact,
        status=VersionStatus.READY,
        parameter_count=134_515_008,
        shape=SMOLLM2_SHAPE,
        dtype="bfloat16",
    )


def make_adapter(
    org, team, artifact, base: ModelVersion, *, model_name: str = "support-tone", creator: str = "engineer"
) -> ModelVersion:
    model = registry.create_model(actor=actor_for(org[creator]), name=model_name, owner_team=team)
    return ModelVersion.objects.create(
        model=model,
        number=1,
        kind=VersionKind.ADAPTER,
        base_version=base,
        source=Source.FINE_TUNE,
        artifact=artifact,
        status=VersionStatus.READY,
        parameter_count=1_000_000,
        metrics={"adapter": {"r": 8}},
    )


def deploy(
    actor, team, version, pool, *, name: str = "support-bot", replicas: int = 1, args=None
) -> Deployment:
    return services.create_deployment(
        actor=actor, name=name, team=team, version=version, pool=pool, replicas=replicas, args=args
    )


@pytest.fixture
def deployment(owner, team, base_version, pool, node):
    return deploy(owner, team, base_version, pool)


def live(deployment: Deployment):
    return Replica.objects.filter(deployment=deployment, desired=DesiredState.RUNNING).order_by("id")


def audited(action: str, obj) -> AuditEvent | None:
    return AuditEvent.objects.filter(action=action, object_id=str(obj.pk)).order_by("-sequence").first()


def share_with_everyone(version: ModelVersion) -> ModelVersion:
    version.model.visibility = Visibility.ORGANISATION
    version.model.save(update_fields=["visibility"])
    return version


def mark_ready(*replicas: Replica) -> None:
    Replica.objects.filter(pk__in=[r.pk for r in replicas]).update(state=ReplicaState.READY)


# --- Pools -----------------------------------------------------------------------------------------
def test_a_platform_admin_creates_a_pool_and_it_is_audited(admin):
    pool = services.create_pool(actor=admin, name="cpu-pool", kind=PoolKind.CPU)
    assert pool.kind == PoolKind.CPU
    assert audited("pool.create", pool).after["name"] == "cpu-pool"


def test_a_team_owner_cannot_create_a_pool(owner):
    with pytest.raises(Forbidden):
        services.create_pool(actor=owner, name="my-pool", kind=PoolKind.CPU)


# --- Creating deployments --------------------------------------------------------------------------
def test_creating_a_deployment_is_audited_and_enqueues_its_reconcile_on_commit(
    owner, team, base_version, pool, node, monkeypatch, django_capture_on_commit_callbacks
):
    from serving import tasks

    enqueued = []
    monkeypatch.setattr(tasks.reconcile_deployment_task, "delay", enqueued.append)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        deployment = deploy(owner, team, base_version, pool)
    assert len(callbacks) == 1
    assert enqueued == [deployment.pk]
    event = audited("deployment.create", deployment)
    assert event.after["version"] == "smollm2-135m:v1" and event.after["replicas"] == 1
    assert deployment.status == DeploymentStatus.PENDING


def test_nothing_is_enqueued_before_the_transaction_commits(
    owner, team, base_version, pool, node, monkeypatch
):
    from serving import tasks

    enqueued = []
    monkeypatch.setattr(tasks.reconcile_deployment_task, "delay", enqueued.append)
    deploy(owner, team, base_version, pool)
    assert enqueued == []  # the test's transaction never commits


def test_a_deployment_too_big_for_the_pool_is_refused_saying_what_it_needs(owner, team, base_version, pool):
    add_node(pool, "cpu-01", memory_bytes=1 * GIB)
    with pytest.raises(Conflict) as refused:
        deploy(owner, team, base_version, pool)
    assert refused.value.message.startswith("Unschedulable on cpu-pool: ")
    assert "needs" in refused.value.message
    assert not Deployment.objects.exists()


def test_a_deployment_on_a_pool_without_ready_nodes_is_refused(owner, team, base_version, pool):
    with pytest.raises(Conflict, match="No ready node"):
        deploy(owner, team, base_version, pool)


def test_engine_arguments_are_validated_for_the_pool_kind(owner, team, base_version, pool, node):
    with pytest.raises(Invalid, match=r"engine_args\.gpu_memory_utilization applies to gpu pools only"):
        deploy(owner, team, base_version, pool, args={"gpu_memory_utilization": 0.5})


def test_a_context_longer_than_the_model_has_is_refused_before_any_engine_starts(
    owner, team, base_version, pool, node
):
    base_version.context_length = 512
    base_version.save(update_fields=["context_length"])
    with pytest.raises(Invalid, match=r"max_model_len: 2048 exceeds the context length .* \(512 tokens\)"):
        deploy(owner, team, base_version, pool)
    assert deploy(owner, team, base_version, pool, args={"max_model_len": 512}).engine_args == {
        "max_model_len": 512
    }


def test_a_restart_onto_engine_arguments_the_model_cannot_honour_is_refused(owner, base_version, deployment):
    base_version.context_length = 1024
    base_version.save(update_fields=["context_length"])
    with pytest.raises(Invalid, match="exceeds the context length"):
        services.restart(actor=owner, deployment=deployment, args={"max_model_len": 4096})


def test_an_embedding_model_takes_no_adapters(org, owner, team, base_version, pool, node, artifact):
    from portfolio.registry.choices import Task

    base_version.model.task = Task.EMBEDDING
    base_version.model.save(update_fields=["task"])
    with pytest.raises(Invalid, match="not on an embedding model"):
        deploy(owner, team, base_version, pool, args={"enable_lora": True})
    deployment = deploy(owner, team, base_version, pool)
    with pytest.raises(Invalid, match="not on an embedding model"):
        services.add_adapter(
            actor=owner, deployment=deployment, adapter=make_adapter(org, team, artifact, base_version)
        )


def test_an_adapter_cannot_be_deployed_on_its_own(org, owner, team, base_version, pool, node, artifact):
    adapter = make_adapter(org, team, artifact, base_version)
    with pytest.raises(Invalid, match="deploy a base version"):
        deploy(owner, team, adapter, pool)


def test_a_version_that_is_not_ready_cannot_be_deployed(owner, team, base_version, pool, node):
    base_version.status = VersionStatus.IMPORTING
    base_version.save(update_fields=["status"])
    with pytest.raises(Conflict, match="only a ready version can be deployed"):
        deploy(owner, team, base_version, pool)


# --- Reconciling ---------------------------------------------------------------------------------
def test_a_reconcile_schedules_one_pending_replica_reserving_its_estimate(deployment, node):
    touched = reconcile.reconcile_deployment(deployment.pk)
    assert touched == {"cpu-01"}
    (replica,) = Replica.objects.filter(deployment=deployment)
    args = engine_args.validate({}, PoolKind.CPU)
    needed = scheduler.estimate(
        pool_kind=PoolKind.CPU, parameter_count=134_515_008, shape=SMOLLM2_SHAPE, args=args
    )
    assert replica.node == node and replica.host == "127.0.0.1"
    assert replica.state == ReplicaState.PENDING and replica.desired == DesiredState.RUNNING
    assert replica.generation == 1
    assert replica.reserved_memory_bytes == needed.ram_bytes
    assert replica.reserved_cores == 1
    assert DeploymentEvent.objects.filter(deployment=deployment, kind="scheduled", replica=replica).exists()


def test_a_second_reconcile_creates_nothing(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    assert reconcile.reconcile_deployment(deployment.pk) == set()
    assert Replica.objects.filter(deployment=deployment).count() == 1


def test_a_reconcile_of_a_deleted_deployment_does_nothing():
    assert reconcile.reconcile_deployment(987654) == set()


def test_the_deployment_is_running_once_its_replicas_are_ready(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    mark_ready(*Replica.objects.filter(deployment=deployment))
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    assert deployment.status_detail == "1/1 ready"


def test_a_failed_replica_makes_the_deployment_degraded_with_its_reason(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    Replica.objects.filter(deployment=deployment).update(
        state=ReplicaState.FAILED, state_detail="out of memory"
    )
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.DEGRADED
    assert "a replica failed: out of memory" in deployment.status_detail
    assert Replica.objects.filter(deployment=deployment).count() == 1


def test_scaling_up_with_room_schedules_another_replica(owner, deployment):
    reconcile.reconcile_deployment(deployment.pk)
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    assert live(deployment).count() == 2
    assert audited("deployment.scale", deployment).after["replicas"] == 2


def test_scaling_beyond_the_room_left_says_why_a_replica_cannot_be_placed(owner, deployment):
    services.scale(actor=owner, deployment=deployment, replicas=3)  # the node has 2 cores, a replica takes 1
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert live(deployment).count() == 2
    assert deployment.status_detail.startswith("Cannot place a replica: needs")
    assert DeploymentEvent.objects.filter(deployment=deployment, kind="unschedulable").count() == 1


def test_scaling_to_zero_tells_every_replica_to_stop(owner, deployment):
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    services.scale(actor=owner, deployment=deployment, replicas=0)
    touched = reconcile.reconcile_deployment(deployment.pk)
    replicas = Replica.objects.filter(deployment=deployment)
    assert replicas.count() == 2
    assert set(replicas.values_list("desired", flat=True)) == {DesiredState.STOPPED}
    assert touched == {"cpu-01"}
    assert audited("deployment.stop", deployment) is not None


def test_replicas_that_stopped_are_forgotten_and_the_deployment_is_stopped(owner, deployment):
    reconcile.reconcile_deployment(deployment.pk)
    services.scale(actor=owner, deployment=deployment, replicas=0)
    reconcile.reconcile_deployment(deployment.pk)
    Replica.objects.filter(deployment=deployment).update(state=ReplicaState.STOPPED)
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert not Replica.objects.filter(deployment=deployment).exists()
    assert deployment.status == DeploymentStatus.STOPPED


def test_a_restart_bumps_the_generation_and_is_audited(owner, deployment):
    services.restart(actor=owner, deployment=deployment)
    deployment.refresh_from_db()
    assert deployment.generation == 2
    event = audited("deployment.restart", deployment)
    assert event.before["generation"] == 1 and event.after["generation"] == 2


def test_a_restart_keeps_the_old_replica_until_the_new_one_is_ready(owner, deployment):
    reconcile.reconcile_deployment(deployment.pk)
    old = Replica.objects.get(deployment=deployment)
    mark_ready(old)
    services.restart(actor=owner, deployment=deployment)
    reconcile.reconcile_deployment(deployment.pk)
    new = Replica.objects.get(deployment=deployment, generation=2)
    old.refresh_from_db()
    assert old.desired == DesiredState.RUNNING
    mark_ready(new)
    reconcile.reconcile_deployment(deployment.pk)
    old.refresh_from_db()
    assert old.desired == DesiredState.STOPPED


# --- Nodes -----------------------------------------------------------------------------------------
def test_draining_a_node_is_audited_and_moves_its_replicas_once_replacements_are_ready(
    admin, deployment, pool, node, django_capture_on_commit_callbacks
):
    other = add_node(pool, "cpu-02")
    reconcile.reconcile_deployment(deployment.pk)
    old = Replica.objects.get(deployment=deployment)
    assert old.node == node
    mark_ready(old)
    with django_capture_on_commit_callbacks() as callbacks:
        services.set_node_state(actor=admin, node=node, state=NodeState.DRAINING)
    assert len(callbacks) == 1  # the deployment on the node is reconciled after commit
    event = audited("node.drain", node)
    assert event.before["state"] == NodeState.READY and event.after["state"] == NodeState.DRAINING

    reconcile.reconcile_deployment(deployment.pk)
    new = Replica.objects.exclude(pk=old.pk).get(deployment=deployment)
    assert new.node == other
    old.refresh_from_db()
    assert old.desired == DesiredState.RUNNING  # still serving until the replacement is ready

    mark_ready(new)
    reconcile.reconcile_deployment(deployment.pk)
    old.refresh_from_db()
    assert old.desired == DesiredState.STOPPED


def test_only_a_platform_admin_can_drain_a_node(owner, node):
    with pytest.raises(Forbidden):
        services.set_node_state(actor=owner, node=node, state=NodeState.DRAINING)


def test_a_lost_node_cannot_be_made_ready_by_hand(admin, node):
    Node.objects.filter(pk=node.pk).update(state=NodeState.LOST)
    node.refresh_from_db()
    with pytest.raises(Conflict, match="is lost"):
        services.set_node_state(actor=admin, node=node, state=NodeState.READY)


def test_a_silent_node_is_marked_lost_and_its_replicas_are_replaced_elsewhere(
    deployment, pool, node, settings
):
    other = add_node(pool, "cpu-02")
    reconcile.reconcile_deployment(deployment.pk)
    old = Replica.objects.get(deployment=deployment)
    assert old.node == node
    silent_since = timezone.now() - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS + 5)
    Node.objects.filter(pk=node.pk).update(heartbeat_at=silent_since)

    assert reconcile.mark_lost_nodes() == ["cpu-01"]
    node.refresh_from_db()
    assert node.state == NodeState.LOST
    assert audited("node.lost", node).actor_kind == "system"

    reconcile.reconcile_deployment(deployment.pk)
    (replacement,) = Replica.objects.filter(deployment=deployment)
    assert replacement.pk != old.pk and replacement.node == other
    assert DeploymentEvent.objects.filter(deployment=deployment, kind="replica_lost").exists()


def test_a_node_that_heartbeats_is_not_marked_lost(node):
    assert reconcile.mark_lost_nodes() == []
    node.refresh_from_db()
    assert node.state == NodeState.READY


# --- Adapters --------------------------------------------------------------------------------------
def test_adding_a_version_that_is_not_an_adapter_of_the_base_is_refused(
    org, owner, team, deployment, artifact, base_version
):
    other_base = ModelVersion.objects.create(
        model=base_version.model, number=2, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
    )
    with pytest.raises(Invalid, match="is not an adapter of smollm2-135m:v1"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=other_base)
    adapter_of_other = make_adapter(org, team, artifact, other_base)
    with pytest.raises(Invalid, match="is not an adapter of smollm2-135m:v1"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_of_other)


def test_adding_an_adapter_without_lora_enabled_rolls_the_replicas_with_lora(
    org, owner, team, deployment, artifact, base_version
):
    adapter = make_adapter(org, team, artifact, base_version)
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    deployment.refresh_from_db()
    assert attached.name == "tone"
    assert deployment.generation == 2
    assert deployment.engine_args == {"enable_lora": True}
    event = audited("deployment.adapter_add", deployment)
    assert event.before["adapters"] == [] and event.after["adapters"] == ["tone"]


def test_adding_an_adapter_with_lora_enabled_hot_loads_it_without_a_restart(
    org, owner, team, base_version, pool, node, artifact
):
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    services.add_adapter(
        actor=owner, deployment=deployment, adapter=make_adapter(org, team, artifact, base_version)
    )
    deployment.refresh_from_db()
    assert deployment.generation == 1


def test_an_adapter_gets_a_valid_default_name_even_from_a_dotted_model_name(
    org, owner, team, deployment, artifact, base_version
):
    adapter = make_adapter(org, team, artifact, base_version, model_name="support.tone_v2")
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=adapter)
    assert attached.name == "support-bot-support-tone-v2-v1"


# --- Endpoints -------------------------------------------------------------------------------------
def test_changing_routes_is_audited_with_the_weights_before_and_after(
    owner, team, base_version, pool, node, deployment
):
    canary = deploy(owner, team, base_version, pool, name="support-bot-next")
    endpoint = services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": deployment.name}]
    )
    services.set_routes(
        actor=owner,
        endpoint=endpoint,
        routes=[
            {"deployment": deployment.name, "weight": 90},
            {"deployment": canary.name, "weight": 10},
        ],
    )
    event = audited("endpoint.routes", endpoint)
    assert [(r["deployment"], r["weight"]) for r in event.before["routes"]] == [("support-bot", 100)]
    assert [(r["deployment"], r["weight"]) for r in event.after["routes"]] == [
        ("support-bot", 90),
        ("support-bot-next", 10),
    ]


def test_an_endpoint_cannot_route_to_another_teams_deployment(
    admin, owner, team, other_team, base_version, pool, node, deployment
):
    share_with_everyone(base_version)  # the other team may serve it too
    theirs = deploy(admin, other_team, base_version, pool, name="contracts-bot")
    with pytest.raises(Invalid, match="no deployment 'contracts-bot' visible to you"):
        services.create_endpoint(actor=owner, name="support", team=team, routes=[{"deployment": theirs.name}])
    with pytest.raises(Invalid, match="routes to its own team's deployments only"):
        services.create_endpoint(actor=admin, name="support", team=team, routes=[{"deployment": theirs.name}])
    endpoint = services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": deployment.name}]
    )
    with pytest.raises(Invalid, match="own team's deployments only"):
        services.set_routes(actor=admin, endpoint=endpoint, routes=[{"deployment": theirs.name}])


def test_a_fallback_loop_is_refused(owner, team, deployment):
    routes = [{"deployment": deployment.name}]
    primary = services.create_endpoint(actor=owner, name="support", team=team, routes=routes)
    backup = services.create_endpoint(
        actor=owner, name="support-backup", team=team, routes=routes, fallback=primary
    )
    with pytest.raises(Invalid, match="fallback loop"):
        services.set_routes(actor=owner, endpoint=primary, routes=routes, fallback=backup)
    with pytest.raises(Invalid, match="fallback loop"):
        services.set_routes(actor=owner, endpoint=primary, routes=routes, fallback=primary)


def test_routes_need_a_weight_above_zero(owner, team, deployment):
    with pytest.raises(Invalid, match="at least one route needs a weight above 0"):
        services.create_endpoint(
            actor=owner, name="support", team=team, routes=[{"deployment": deployment.name, "weight": 0}]
        )


# --- The registry and the gate ---------------------------------------------------------------------
def test_a_deployed_version_cannot_be_archived(owner, base_version, deployment):
    with pytest.raises(Conflict, match="deployed by support-bot"):
        registry.archive_version(actor=owner, version=base_version)


def test_a_version_served_as_an_adapter_cannot_be_archived(
    org, owner, team, artifact, base_version, deployment
):
    adapter = make_adapter(org, team, artifact, base_version)
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    with pytest.raises(Conflict, match=r"deployed by support-bot \(adapter tone\)"):
        registry.archive_version(actor=owner, version=adapter)


def test_an_engineer_of_the_team_can_deploy(org, team, base_version, pool, node):
    assert deploy(actor_for(org["engineer"]), team, base_version, pool).owner_team == team


def test_a_viewer_cannot_create_a_deployment(org, team, base_version, pool, node):
    with pytest.raises(Forbidden):
        deploy(actor_for(org["viewer"]), team, base_version, pool)


def test_an_outsider_does_not_see_another_teams_deployment(org, deployment):
    outsider = actor_for(org["outsider"])
    with pytest.raises(NotFound):
        gate.require(outsider, "deployment.manage", deployment)
    with pytest.raises(NotFound):
        services.scale(actor=outsider, deployment=deployment, replicas=0)


def test_replicas_on_a_gpu_pool_each_claim_their_own_gpu(admin, owner, team, base_version):
    gpu_pool = services.create_pool(actor=admin, name="gpu-pool", kind=PoolKind.GPU)
    gpus = [{"index": i, "name": "NVIDIA L4", "memory_bytes": 24 * GIB} for i in (0, 1)]
    Node.objects.create(
        name="gpu-01",
        pool=gpu_pool,
        cpu_cores=16,
        memory_bytes=128 * GIB,
        gpus=gpus,
        state=NodeState.READY,
        heartbeat_at=timezone.now(),
        address="10.0.0.5",
    )
    deployment = deploy(owner, team, base_version, gpu_pool, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    placed = list(Replica.objects.filter(deployment=deployment).order_by("id"))
    assert [r.gpu_indices for r in placed] == [[0], [1]]
    assert {r.reserved_memory_bytes for r in placed} == {int(24 * GIB * 0.9)}


# --- Isolation: what a team's deployment and endpoint may use, whoever acts ------------------------
@pytest.fixture
def member_of_both(make_user, team, other_team):
    """An engineer of both teams: sees the other team's private models and pools, which its team may not use."""
    from portfolio.accounts.models import Membership

    user = make_user("both")
    Membership.objects.create(user=user, team=team, role="engineer")
    Membership.objects.create(user=user, team=other_team, role="engineer")
    return actor_for(user)


@pytest.fixture
def their_version(org, other_team, artifact):
    """A ready base version of the other team's own (team-visible) model."""
    model = registry.create_model(
        actor=actor_for(org["outsider"]), name="contracts-base", owner_team=other_team
    )
    return ModelVersion.objects.create(
        model=model,
        number=1,
        kind=VersionKind.BASE,
        source=Source.LOCAL,
        artifact=artifact,
        status=VersionStatus.READY,
        parameter_count=134_515_008,
        shape=SMOLLM2_SHAPE,
    )


@pytest.fixture
def their_endpoint(org, other_team, their_version, pool, node):
    outsider = actor_for(org["outsider"])
    deploy(outsider, other_team, their_version, pool, name="contracts-bot")
    return services.create_endpoint(
        actor=outsider, name="contracts", team=other_team, routes=[{"deployment": "contracts-bot"}]
    )


def test_an_engineer_who_only_views_another_team_cannot_make_its_endpoint_a_fallback(
    make_user, team, other_team, deployment, their_endpoint
):
    # The repro: an engineer of team A, a viewer of team B, sets B's endpoint as the fallback of A's.
    from portfolio.accounts.models import Membership

    user = make_user("a-engineer-b-viewer")
    Membership.objects.create(user=user, team=team, role="engineer")
    Membership.objects.create(user=user, team=other_team, role="viewer")
    actor = actor_for(user)
    routes = [{"deployment": deployment.name}]
    with pytest.raises(
        Invalid, match=r"fallback: contracts belongs to another team; .* of its own team \(Support AI\)"
    ):
        services.create_endpoint(
            actor=actor, name="support", team=team, routes=routes, fallback=their_endpoint
        )
    endpoint = services.create_endpoint(actor=actor, name="support", team=team, routes=routes)
    with pytest.raises(Invalid, match="fallback: contracts belongs to another team") as refused:
        services.set_routes(actor=actor, endpoint=endpoint, routes=routes, fallback=their_endpoint)
    assert refused.value.fields == {"fallback": ["Choose an endpoint of Support AI."]}
    endpoint.refresh_from_db()
    assert endpoint.fallback is None
    assert audited("endpoint.routes", endpoint) is None


def test_not_even_a_platform_admin_makes_another_teams_endpoint_a_fallback(
    admin, team, deployment, their_endpoint
):
    routes = [{"deployment": deployment.name}]
    with pytest.raises(Invalid, match="belongs to another team"):
        services.create_endpoint(
            actor=admin, name="support", team=team, routes=routes, fallback=their_endpoint
        )
    endpoint = services.create_endpoint(actor=admin, name="support", team=team, routes=routes)
    with pytest.raises(Invalid, match="belongs to another team"):
        services.set_routes(actor=admin, endpoint=endpoint, routes=routes, fallback=their_endpoint)


def test_an_endpoint_of_the_same_team_is_a_fallback(owner, team, deployment):
    routes = [{"deployment": deployment.name}]
    backup = services.create_endpoint(actor=owner, name="support-backup", team=team, routes=routes)
    endpoint = services.create_endpoint(
        actor=owner, name="support", team=team, routes=routes, fallback=backup
    )
    assert endpoint.fallback == backup
    assert services.set_routes(actor=owner, endpoint=endpoint, routes=routes, fallback=None).fallback is None


def test_a_member_of_two_teams_cannot_put_one_teams_deployment_on_a_pool_only_the_other_may_use(
    admin, member_of_both, team, other_team, base_version, their_version
):
    theirs_only = services.create_pool(
        actor=admin, name="contracts-pool", kind=PoolKind.CPU, teams=[other_team]
    )
    add_node(theirs_only, "contracts-01")
    with pytest.raises(Invalid, match=r"pool: contracts-pool is not open to Support AI") as refused:
        deploy(member_of_both, team, base_version, theirs_only)
    assert refused.value.fields == {"pool": ["Not open to Support AI."]}
    with pytest.raises(Invalid, match="not open to Support AI"):
        deploy(admin, team, base_version, theirs_only)  # the team decides, not who acts
    assert not Deployment.objects.exists()
    assert deploy(member_of_both, other_team, their_version, theirs_only).pool == theirs_only


def test_a_member_of_two_teams_cannot_serve_the_other_teams_private_model_as_this_teams(
    admin, member_of_both, team, their_version, pool, node
):
    with pytest.raises(Invalid, match=r"version: contracts-base:v1 is not shared with Support AI") as refused:
        deploy(member_of_both, team, their_version, pool)
    assert refused.value.fields == {"version": ["Not shared with Support AI."]}
    with pytest.raises(Invalid, match="not shared with Support AI"):
        deploy(admin, team, their_version, pool)
    assert not Deployment.objects.exists()
    assert deploy(member_of_both, team, share_with_everyone(their_version), pool).version == their_version


def test_a_model_shared_with_the_department_is_served_by_its_teams_only(
    admin, department, team, base_version, pool, node, artifact, org
):
    from portfolio.accounts.models import Team
    from portfolio.registry.choices import Visibility

    sibling = Team.objects.create(department=department, name="Support Tools", slug="support-tools")
    base_version.model.visibility = Visibility.DEPARTMENT
    base_version.model.save(update_fields=["visibility"])
    assert deploy(admin, sibling, base_version, pool, name="tools-bot").owner_team == sibling
    from portfolio.accounts.models import Department

    elsewhere = Team.objects.create(
        department=Department.objects.create(name="Finance", cost_center="CC-900"),
        name="Finance AI",
        slug="finance-ai",
    )
    with pytest.raises(Invalid, match="not shared with Finance AI"):
        deploy(admin, elsewhere, base_version, pool, name="finance-bot")


def test_a_restart_onto_another_teams_private_version_is_refused(
    member_of_both, team, deployment, their_version
):
    with pytest.raises(Invalid, match="version: contracts-base:v1 is not shared with Support AI"):
        services.restart(actor=member_of_both, deployment=deployment, version=their_version)
    deployment.refresh_from_db()
    assert (deployment.version.label, deployment.generation) == ("smollm2-135m:v1", 1)


def test_an_adapter_of_another_teams_private_model_is_not_added_to_this_teams_deployment(
    org, member_of_both, team, other_team, artifact, base_version, deployment
):
    theirs = make_adapter(
        org, other_team, artifact, base_version, model_name="contracts-tone", creator="outsider"
    )
    with pytest.raises(Invalid, match="adapter: contracts-tone:v1 is not shared with Support AI"):
        services.add_adapter(actor=member_of_both, deployment=deployment, adapter=theirs)
    assert not deployment.adapters.exists()


def test_scaling_up_on_a_pool_closed_to_the_team_since_is_refused_but_scaling_down_is_not(
    admin, owner, other_team, deployment, pool
):
    services.update_pool(
        actor=admin,
        pool=pool,
        description="",
        teams=[other_team],
        gpu_hour_rate=pool.gpu_hour_rate,
        cpu_core_hour_rate=pool.cpu_core_hour_rate,
    )
    with pytest.raises(Invalid, match="pool: cpu-pool is not open to Support AI"):
        services.scale(actor=admin, deployment=deployment, replicas=2)
    assert services.scale(actor=admin, deployment=deployment, replicas=0).replicas == 0

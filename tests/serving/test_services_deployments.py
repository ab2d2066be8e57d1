"""Serving through its service functions, on real PostgreSQL: pools, creating deployments (what is
refused and why), and the registry and permission gate in front of them."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.registry import services as registry
from portfolio.registry.choices import VersionStatus
from portfolio.registry.models import ModelVersion
from serving import reconcile, services
from serving.choices import DeploymentStatus, NodeState, PoolKind
from serving.models import Deployment, Node, Replica
from tests.conftest import actor_for
from tests.interleave import Pause, interleave
from tests.registry.conftest import ready_base
from tests.serving.conftest import SMOLLM2_SHAPE, audited, deploy, make_adapter, share_with_everyone
from tests.serving.nodes import GIB, add_node

pytestmark = pytest.mark.django_db


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


def test_a_tensor_parallel_size_that_does_not_divide_the_heads_is_refused(admin, owner, team, base_version):
    """vLLM refuses to start such an engine: each replica crash-looped five times, holding its GPUs."""
    from serving.choices import PoolKind
    from tests.serving.nodes import GIB, add_node

    gpus = services.create_pool(actor=admin, name="gpu-pool", kind=PoolKind.GPU)
    add_node(
        gpus, "gpu-01", cores=16, gpus=[{"index": i, "name": "L4", "memory_bytes": 24 * GIB} for i in (0, 1)]
    )
    base_version.shape = {**(base_version.shape or {}), "num_attention_heads": 9}
    base_version.save(update_fields=["shape"])
    with pytest.raises(Invalid, match=r"tensor_parallel_size: 2 does not divide .* 9 attention heads"):
        deploy(owner, team, base_version, gpus, args={"tensor_parallel_size": 2})
    base_version.shape = {**base_version.shape, "num_attention_heads": 8}
    base_version.save(update_fields=["shape"])
    assert deploy(owner, team, base_version, gpus, args={"tensor_parallel_size": 2}).engine_args == {
        "tensor_parallel_size": 2
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


# --- Engine arguments by the version's family ------------------------------------------------------
def test_a_family_argument_is_checked_against_the_deployed_versions_family(
    owner, team, base_version, pool, node
):
    with pytest.raises(
        Invalid, match="images_per_prompt applies to vision_language models only; this version is dense"
    ):
        deploy(owner, team, base_version, pool, args={"images_per_prompt": 2})
    base_version.family = "vision_language"
    base_version.save(update_fields=["family"])
    deployment = deploy(owner, team, base_version, pool, args={"images_per_prompt": 2})
    from serving import engine_args

    assert engine_args.for_deployment(deployment)["images_per_prompt"] == 2


# --- Archiving a version while it is being deployed -----------------------------------------------
# The versions restart and add_adapter put to use are of another team's model, shared: archiving one locks
# its model's team, not the deployment's, so nothing but the version's own row stands between the two.
def _shared_base(w) -> ModelVersion:
    version = ready_base(actor_for(w["org"]["outsider"]), w["other_team"], "shared-base", w["artifact"],
                         parameter_count=134_515_008, shape=SMOLLM2_SHAPE)  # fmt: skip
    return share_with_everyone(version)


def _shared_adapter(w) -> ModelVersion:
    adapter = make_adapter(w["org"], w["other_team"], w["artifact"], w["base_version"], creator="outsider")
    return share_with_everyone(adapter)


USES = {
    # name: (the version it puts to use, given the world; the call that does)
    "create_deployment": (
        lambda w: w["base_version"],
        lambda w, version: deploy(w["owner"], w["team"], version, w["pool"], name="second-bot"),
    ),
    "restart": (
        _shared_base,
        lambda w, version: services.restart(actor=w["owner"], deployment=w["deployment"], version=version),
    ),
    "add_adapter": (
        _shared_adapter,
        lambda w, version: services.add_adapter(
            actor=w["owner"], deployment=w["deployment"], adapter=version
        ),
    ),
}


@pytest.fixture
def world(org, owner, team, other_team, pool, node, artifact, base_version, monkeypatch):
    from serving import tasks

    monkeypatch.setattr(tasks.reconcile_deployment_task, "delay", lambda *args: None)
    return {"org": org, "owner": owner, "team": team, "other_team": other_team, "pool": pool,
            "artifact": artifact, "base_version": base_version}  # fmt: skip


def _version_to_use(world, use) -> ModelVersion:
    if use != "create_deployment":
        world["deployment"] = deploy(world["owner"], world["team"], world["base_version"], world["pool"])
    return USES[use][0](world)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("use", USES)
def test_a_version_archived_meanwhile_is_not_deployed(use, world, admin, monkeypatch):
    """The archive has found the version unused and not committed yet when a deployment puts it to use: that
    waits for the archive, then finds the version archived."""
    version = _version_to_use(world, use)
    pause = Pause()
    monkeypatch.setattr(registry, "in_use_reasons", pause.hook(registry.in_use_reasons))

    archived, used = interleave(
        pause,
        lambda: registry.archive_version(actor=admin, version=version),
        lambda: USES[use][1](world, version),
    )

    assert archived.error is None
    assert isinstance(used.error, Conflict) and "archived" in str(used.error), used.error
    assert registry.in_use_reasons(ModelVersion.objects.get(pk=version.pk)) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("use", USES)
def test_a_version_being_deployed_is_not_archived_meanwhile(use, world, admin, monkeypatch):
    """The other way round: the deployment has found the version ready and not committed yet when the archive
    asks whether it is in use; the archive waits for it, then finds it deployed (and neither deadlocks)."""
    from serving.services import deployments

    version = _version_to_use(world, use)
    pause = Pause()
    monkeypatch.setattr(deployments, "require_usable_by", pause.hook(deployments.require_usable_by))

    used, archived = interleave(
        pause,
        lambda: USES[use][1](world, version),
        lambda: registry.archive_version(actor=admin, version=version),
    )

    assert used.error is None
    assert isinstance(archived.error, Conflict) and "deployed" in str(archived.error), archived.error
    assert ModelVersion.objects.get(pk=version.pk).status == VersionStatus.READY


PRIVATE = {
    # name: another team's version, unshared, that the call of USES would put to use
    "create_deployment": lambda w: _private_base(w),
    "restart": lambda w: _private_base(w),
    "add_adapter": lambda w: make_adapter(
        w["org"], w["other_team"], w["artifact"], w["base_version"], creator="outsider"
    ),  # fmt: skip
}


def _private_base(w) -> ModelVersion:
    return ready_base(actor_for(w["org"]["outsider"]), w["other_team"], "private-base", w["artifact"],
                      parameter_count=134_515_008, shape=SMOLLM2_SHAPE)  # fmt: skip


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("use", USES)
def test_a_version_one_cannot_see_is_not_waited_on(use, world):
    """Another team's unshared version is refused as not found before its row is locked: a call naming it
    neither waits on that team's work (here, a lock held on it) nor learns from a wait that it exists."""
    version = PRIVATE[use](world)
    if use != "create_deployment":
        world["deployment"] = deploy(world["owner"], world["team"], world["base_version"], world["pool"])
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                ModelVersion.objects.select_for_update().get(pk=version.pk)
                held.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")  # a wait would end in an error, not NotFound
            with pytest.raises(NotFound):
                USES[use][1](world, version)
    finally:
        release.set()
        holder.join(10)


@pytest.mark.django_db(transaction=True)
def test_two_restarts_swapping_versions_do_not_deadlock(world, monkeypatch):
    """One deployment restarts onto the other's version while the other restarts onto its: each locks the
    version it moves to and (through its deployment) the one it leaves, so they take both in one order."""
    from serving.services import deployments

    first = deploy(world["owner"], world["team"], world["base_version"], world["pool"])
    shared = _shared_base(world)
    second = deploy(world["owner"], world["team"], shared, world["pool"], name="second-bot")
    pause = Pause()
    monkeypatch.setattr(deployments, "_lock_version", pause.hook(deployments._lock_version))

    one, two = interleave(
        pause,
        lambda: services.restart(actor=world["owner"], deployment=first, version=shared),
        lambda: services.restart(actor=world["owner"], deployment=second, version=world["base_version"]),
    )

    assert (one.error, two.error) == (None, None)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.version_id, second.version_id) == (shared.pk, world["base_version"].pk)

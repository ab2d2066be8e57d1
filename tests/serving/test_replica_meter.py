"""The serving compute meter: each run of a replica's engine is one interval of billing's ledger, opened
when the agent starts the engine and closed when it stops, crashes, is forgotten or its node is lost; the
sweep repairs what a missed transition left, within one sweep interval."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from portfolio.billing.choices import ComputeKind
from portfolio.billing.models import ComputeInterval
from serving import agent, processes, reconcile, replica_meter
from serving.choices import DesiredState, NodeState, PoolKind, ReplicaState
from serving.models import ComputePool, Replica
from serving.tasks import meter_replicas

pytestmark = pytest.mark.django_db
GIB = 1024**3


def _runs(replica: Replica) -> list[ComputeInterval]:
    return list(
        ComputeInterval.objects.filter(key__startswith=f"replica:{replica.pk}:").order_by("started_at")
    )


def _reserve(replica: Replica) -> Replica:
    Replica.objects.filter(pk=replica.pk).update(reserved_cores=1, reserved_memory_bytes=2 * GIB)
    replica.refresh_from_db()
    return replica


def _started(replica: Replica, **fields) -> Replica:
    """A replica whose engine runs, as the agent leaves it (without starting a process)."""
    Replica.objects.filter(pk=replica.pk).update(
        state=ReplicaState.READY, started_at=timezone.now() - timedelta(minutes=5), **fields
    )
    replica.refresh_from_db()
    return replica


def _wait_gone(pid: int, replica_id: int) -> None:
    deadline = time.monotonic() + 20
    while processes.find(pid, replica_id) is not None:
        assert time.monotonic() < deadline, "the engine did not exit"
        time.sleep(0.1)


# --- The agent's transitions, with real engine processes -----------------------------------------------
def test_an_engine_run_is_metered_from_its_start_to_its_stop_and_charged_to_the_owning_team(
    engines, replica, team
):
    replica = _reserve(replica)
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STARTING
    (run,) = _runs(replica)
    assert (run.kind, run.team_id, run.department_id, run.subject) == (
        ComputeKind.REPLICA,
        team.pk,
        team.department_id,
        "support-bot",
    )
    assert (run.pool_id, run.pool, run.gpus, run.cpu_cores, run.memory_bytes) == (
        replica.deployment.pool_id,
        "cpu-pool",
        0,
        1,
        2 * GIB,
    )
    assert run.started_at == replica.started_at and run.ended_at is None

    Replica.objects.filter(pk=replica.pk).update(desired=DesiredState.STOPPED)
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STOPPED
    (run,) = _runs(replica)
    assert run.ended_at is not None and run.ended_at >= run.started_at


def test_a_crash_ends_the_run_and_the_restart_after_back_off_is_a_new_run(engines, replica):
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    first_pid = replica.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(first_pid, signal.SIGKILL)
    _wait_gone(first_pid, replica.pk)
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.BACKOFF
    (crashed,) = _runs(replica)
    assert crashed.ended_at is not None, "no compute is metered while the replica waits to restart"

    Replica.objects.filter(pk=replica.pk).update(next_start_at=timezone.now() - timedelta(seconds=1))
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STARTING
    first, second = _runs(replica)
    assert first.ended_at is not None and second.ended_at is None
    assert second.started_at == replica.started_at and second.key != first.key


def test_an_engine_that_cannot_be_started_backs_off_then_fails_never_pending_for_ever(
    engines, replica, settings, monkeypatch
):
    """Only corrupted files were handled: any other failure to start (here: no engine Python on the node)
    left the replica pending, re-materialised and re-tried at every heartbeat, with nothing on its
    timeline and the restart limit never reached."""
    from serving.models import DeploymentEvent

    settings.ENGINE_MAX_RESTARTS = 1

    def missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/opt/engine/bin/python")

    monkeypatch.setattr(agent.processes, "start", missing)
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert (replica.state, replica.restarts) == (ReplicaState.BACKOFF, 1)
    assert "Cannot start the engine: FileNotFoundError" in replica.state_detail
    Replica.objects.filter(pk=replica.pk).update(next_start_at=timezone.now() - timedelta(seconds=1))
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.FAILED and "gave up after 1 restarts" in replica.state_detail
    kinds = list(DeploymentEvent.objects.filter(deployment=replica.deployment).values_list("kind", flat=True))
    assert kinds.count("crashed") == 1 and kinds.count("failed") == 1
    assert not _runs(replica), "nothing ran, so nothing is metered"


# --- Control plane: lost nodes and forgotten replicas ---------------------------------------------
def test_a_lost_nodes_replicas_stop_being_metered_at_its_last_heartbeat(replica):
    replica = _started(replica)
    replica_meter.started(replica)
    last_seen = timezone.now() - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS + 60)
    replica.node.__class__.objects.filter(pk=replica.node_id).update(heartbeat_at=last_seen)
    assert reconcile.mark_lost_nodes() == ["keys-node"]
    (run,) = _runs(replica)
    assert run.ended_at == last_seen


def test_a_lost_node_back_before_its_replicas_were_forgotten_has_them_metered_again(replica):
    """Their runs closed at the last heartbeat; the sweep's reopening of a closed run does nothing, so
    the replicas ran unmetered until their engines restarted. A recovery starts each run again."""
    replica = _started(replica)
    replica_meter.started(replica)
    node = replica.node
    last_seen = timezone.now() - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS + 60)
    node.__class__.objects.filter(pk=node.pk).update(heartbeat_at=last_seen)
    assert reconcile.mark_lost_nodes() == ["keys-node"]
    agent.register(node.name, node.pool.name, node.address, capacity={"cpu_cores": 4})
    meter_replicas()
    first, again = _runs(replica)
    assert first.ended_at == last_seen
    assert again.ended_at is None and again.started_at > last_seen


def test_a_replica_forgotten_by_the_reconcile_stops_being_metered(replica):
    replica = _started(replica)
    replica_meter.started(replica)
    replica.node.__class__.objects.filter(pk=replica.node_id).update(state=NodeState.LOST)
    Replica.objects.filter(pk=replica.pk).update(desired=DesiredState.RUNNING)
    reconcile.reconcile_deployment(replica.deployment_id)
    assert not Replica.objects.filter(pk=replica.pk).exists()
    (run,) = ComputeInterval.objects.filter(key=replica_meter.key(replica))
    assert run.ended_at is not None


# --- The sweep --------------------------------------------------------------------------------------
def test_the_sweep_opens_the_run_of_a_running_replica_that_has_none_from_its_engines_start(replica):
    replica = _started(replica)
    assert meter_replicas() == (0, 1)
    (run,) = _runs(replica)
    assert run.started_at == replica.started_at and run.ended_at is None
    assert meter_replicas() == (0, 0), "a second sweep changes nothing"


def test_the_sweep_closes_the_runs_of_replicas_that_are_gone_or_no_longer_running(replica, team):
    replica = _started(replica)
    replica_meter.started(replica)
    gone = Replica.objects.create(
        deployment=replica.deployment, node=replica.node, generation=1, host="127.0.0.1"
    )
    gone = _started(gone)
    replica_meter.started(gone)
    gone_key = replica_meter.key(gone)
    gone.delete()
    Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.BACKOFF)
    assert meter_replicas() == (2, 0)
    assert ComputeInterval.objects.get(key=gone_key).ended_at is not None
    assert all(run.ended_at is not None for run in _runs(replica))


def test_a_replica_on_a_gpu_pool_is_metered_by_its_gpus_its_memory_is_inside_them(replica):
    pool = ComputePool.objects.create(name="gpu-pool", kind=PoolKind.GPU)
    replica.deployment.__class__.objects.filter(pk=replica.deployment_id).update(pool=pool)
    replica = _started(replica, gpu_indices=[0, 1], reserved_memory_bytes=20 * GIB)
    meter_replicas()
    (run,) = _runs(replica)
    assert (run.pool, run.gpus, run.cpu_cores, run.memory_bytes) == ("gpu-pool", 2, 0, 0)


def test_replicas_sharing_a_gpu_each_hold_the_share_of_its_memory_they_claim(replica):
    """Two replicas placed on one 24 GiB GPU at gpu_memory_utilization 0.45 were each metered as a whole GPU:
    the pool billed two GPU-hours for every hour of one GPU, possibly to two teams."""
    pool = ComputePool.objects.create(name="gpu-pool", kind=PoolKind.GPU)
    replica.deployment.__class__.objects.filter(pk=replica.deployment_id).update(pool=pool)
    replica.node.__class__.objects.filter(pk=replica.node_id).update(
        gpus=[
            {"index": 0, "name": "NVIDIA L4", "memory_bytes": 24 * GIB},
            {"index": 1, "name": "NVIDIA L4", "memory_bytes": 24 * GIB},
        ]  # fmt: skip
    )
    claim = int(24 * GIB * 0.45)  # what the scheduler reserves on each GPU it places the replica on
    first = _started(replica, gpu_indices=[0], reserved_memory_bytes=claim)
    second = _started(
        Replica.objects.create(
            deployment=replica.deployment, node=replica.node, generation=1, host="127.0.0.1"
        ),
        gpu_indices=[0],
        reserved_memory_bytes=claim,
    )
    both = _started(
        Replica.objects.create(
            deployment=replica.deployment, node=replica.node, generation=1, host="127.0.0.1"
        ),
        gpu_indices=[0, 1],
        reserved_memory_bytes=int(24 * GIB * 0.9),
    )
    meter_replicas()
    assert [run.gpus for run in _runs(first) + _runs(second) + _runs(both)] == [
        Decimal("0.45"), Decimal("0.45"), Decimal("1.8")
    ]  # fmt: skip


def test_the_sweep_runs_every_minute():
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "serving.meter_replicas")
    assert entry["schedule"] == 60.0

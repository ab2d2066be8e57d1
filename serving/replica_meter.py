"""The serving compute meter: each run of a replica's engine is one interval in billing's ledger, charged to
the deployment's owning team on its pool.

- A run opens when the agent starts the engine (``started``: a crash restart or a re-key is a new run, under
  a key of its own: ``replica:<id>:<start in µs>``) and closes when the engine stops, crashes, gives up, is
  forgotten with its replica, or its node is lost (``stopped``).
- What is held: on a GPU pool, the share of each of its GPUs' memory the replica's engine claims
  (``gpu_memory_utilization``: two replicas at 0.45 on one GPU hold 0.45 GPU each, so a shared GPU is not
  billed twice; its reserved memory is GPU memory, inside that share, so no memory is metered there); on a
  CPU pool, its reserved cores and RAM.
- ``sweep`` (beat, every minute) closes the open runs whose replica is gone or no longer running and opens
  those of running replicas that have none, so a missed transition costs at most one sweep interval.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from django.db.models import Q
from django.utils import timezone

from portfolio.billing import meters
from portfolio.billing.choices import ComputeKind
from serving.choices import NodeState, PoolKind, ReplicaState
from serving.models import Node, Replica

# States in which the replica's engine process runs (stopping: until the agent has stopped it).
RUNNING = (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.STOPPING)
SHARE_STEP = Decimal("0.0001")  # the ledger's GPU column keeps four decimals


def key(replica: Replica) -> str:
    """The interval of the replica's current run (its engine's start time tells runs apart)."""
    assert replica.started_at is not None, "only a started engine is metered"
    return f"replica:{replica.pk}:{int(replica.started_at.timestamp() * 1_000_000)}"


def gpu_share(replica: Replica) -> Decimal:
    """The GPUs the replica holds, each counted by the share of its memory the replica reserves (at most one
    whole GPU); a GPU its node no longer reports counts whole."""
    sizes = {gpu["index"]: gpu.get("memory_bytes") for gpu in (replica.node.gpus if replica.node else [])}
    held = Fraction(0)
    for index in replica.gpu_indices or []:
        size = sizes.get(index)
        held += min(Fraction(1), Fraction(replica.reserved_memory_bytes, size)) if size else Fraction(1)
    # The claim is the GPU's memory times the fraction, rounded down to a byte: 0.45 reads back as 0.45.
    return (Decimal(held.numerator) / Decimal(held.denominator)).quantize(SHARE_STEP, rounding=ROUND_HALF_UP)


def _prefix(replica_id: int) -> str:
    return f"replica:{replica_id}:"


def _open(replica: Replica) -> None:
    deployment = replica.deployment
    pool = deployment.pool
    on_gpus = pool.kind == PoolKind.GPU
    assert replica.started_at is not None
    meters.open_interval(
        key=key(replica),
        kind=ComputeKind.REPLICA,
        team_id=deployment.owner_team_id,
        department_id=deployment.owner_team.department_id,
        subject=deployment.name,
        pool_id=pool.pk,
        pool=pool.name,
        gpus=gpu_share(replica) if on_gpus else Decimal(0),
        cpu_cores=0 if on_gpus else replica.reserved_cores,
        memory_bytes=0 if on_gpus else replica.reserved_memory_bytes,
        started_at=replica.started_at,
    )


def _close_runs(replica_id: int, at: datetime, *, keep: str = "") -> int:
    return sum(
        meters.close_interval(open_key, at)
        for open_key in meters.open_keys(ComputeKind.REPLICA)
        if open_key.startswith(_prefix(replica_id)) and open_key != keep
    )


def started(replica: Replica) -> None:
    """The agent started the replica's engine (``replica.started_at``): meter this run, and end any earlier
    run of the replica still open (a re-key or an adoption restarts the engine without a crash)."""
    assert replica.started_at is not None
    _close_runs(replica.pk, replica.started_at, keep=key(replica))
    _open(replica)


def stopped(replica_id: int, at: datetime | None = None) -> int:
    """The replica's engine no longer runs (stopped, crashed, gave up, forgotten): close its open runs."""
    return _close_runs(replica_id, at or timezone.now())


def node_lost(node_id: int, last_heartbeat: datetime | None) -> int:
    """A node went silent: its replicas' runs end at its last heartbeat, the last time they were seen."""
    at = last_heartbeat or timezone.now()
    return sum(stopped(pk, at) for pk in Replica.objects.filter(node_id=node_id).values_list("pk", flat=True))


def node_back(node: Node) -> None:
    """A node back before its replicas were forgotten: their runs were closed at its last heartbeat when it
    was lost (``node_lost``), and reopening a closed run does nothing, so they ran unmetered
    until their engines restarted. Each running replica's run starts again now, under a key of its own."""
    running = Replica.objects.filter(node=node, state__in=RUNNING, started_at__isnull=False)
    for replica in running.select_related("deployment__owner_team", "deployment__pool", "node"):
        replica.started_at = node.heartbeat_at
        replica.save(update_fields=["started_at"])
        started(replica)


def sweep(now: datetime | None = None) -> tuple[int, int]:
    """Make the open replica intervals exactly the runs of the running replicas: (closed, opened)."""
    now = now or timezone.now()
    # The open keys first: a run the agent opens after this read is left alone (not closed as unknown).
    open_keys = meters.open_keys(ComputeKind.REPLICA)
    running = {
        key(replica): replica
        for replica in Replica.objects.filter(state__in=RUNNING, started_at__isnull=False)
        .exclude(Q(node__isnull=True) | Q(node__state=NodeState.LOST))
        .select_related("deployment__owner_team", "deployment__pool", "node")
    }
    closed = sum(meters.close_interval(gone, now) for gone in sorted(open_keys - running.keys()))
    missing = [replica for run, replica in running.items() if run not in open_keys]
    for replica in missing:
        _open(replica)  # idempotent: a run already closed (it crashed meanwhile) stays closed
    return closed, len(missing)

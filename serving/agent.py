"""The node agent: what runs on every machine of a pool, inside its Celery worker.

``reconcile_node`` makes this machine's engines match the database: start what is scheduled here,
adopt engines that survived an agent restart, restart crashed ones with back-off (giving up after
repeated failures), stop what is no longer wanted, hot-load and unload adapters, and kill orphans. It runs
every few seconds from the agent's heartbeat loop and on demand from the node's queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import psutil
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.leases import Lease
from portfolio.registry.storage import CorruptArtifact
from serving import (
    adapter_sync,
    agent_lock,
    draining,
    engine_args,
    engine_sweep,
    gpu_scan,
    heartbeats,
    prefetch,
    processes,
    replica_meter,
)
from serving.choices import DesiredState, NodeState, ReplicaState
from serving.engine_keys import engine_key
from serving.models import ComputePool, Node, Replica
from serving.timeline import event

logger = logging.getLogger(__name__)
AGENT_VERSION = "1"


# --- Capacity and heartbeat ------------------------------------------------------------------------
# A heartbeat reports the node's capacity, but asks nvidia-smi (up to 20 s on a busy or failing driver) at
# most this often: asked on every beat, a slow driver held the beats past the lost window and the node
# was called lost while it ran.
GPU_RESCAN_SECONDS = 300
_gpus_seen: tuple[float, list[dict] | None] | None = None


def detect_gpus() -> list[dict] | None:
    """This machine's GPUs; ``None`` while unknown (nvidia-smi failed at its first scan): the node keeps the
    GPUs it has on record. A failed rescan keeps the GPUs last seen: reported as none, the node refused
    placements and fine-tunes until the next rescan."""
    global _gpus_seen
    seen = _gpus_seen
    fresh = seen is not None and time.monotonic() - seen[0] < GPU_RESCAN_SECONDS
    if seen is None or not fresh:
        known = seen[1] if seen else None
        timeout = gpu_scan.FIRST_SCAN_TIMEOUT if known is None else gpu_scan.rescan_timeout()
        scanned = gpu_scan.ask_nvidia_smi(timeout)
        seen = _gpus_seen = (time.monotonic(), known if scanned is None else scanned)
    return None if seen[1] is None else [dict(gpu) for gpu in seen[1]]


def detect_capacity() -> dict:
    capacity = {
        "cpu_cores": psutil.cpu_count(logical=True) or 1,
        "memory_bytes": psutil.virtual_memory().total,
    }
    gpus = detect_gpus()
    if gpus is not None:  # else ``register`` leaves the node's GPUs as they are
        capacity["gpus"] = gpus
    return capacity


def register(name: str, pool_name: str, address: str, capacity: dict | None = None) -> Node | None:
    """Create or refresh this machine's node row; a node that was lost comes back as ready. ``None``: not
    registered (its pool missing, or the node recorded in another pool), and not to be reconciled."""
    pool = ComputePool.objects.filter(name=pool_name).first()
    if pool is None:
        logger.error("node %s: pool %r does not exist; an admin must create it first", name, pool_name)
        return None
    capacity = capacity or detect_capacity()
    with transaction.atomic():
        node, created = Node.objects.select_for_update().get_or_create(
            name=name,
            defaults={
                "pool": pool,
                "address": address,
                **capacity,
                "heartbeat_at": heartbeats.now(),
                "agent_version": AGENT_VERSION,
            },
        )
        if created:
            node.refresh_from_db(fields=["heartbeat_at"])  # the database's time, written as Now()
            audit.record(Actor.for_system(f"agent:{name}"), "node.register", node, after=node.snapshot())
            return node
        if node.pool_id != pool.pk:  # another machine's node, or this one configured for another pool
            # Taken over, its address and capacity moved here and its engines were started on this machine.
            logger.error(
                "node %s is recorded in pool %r, this agent is configured for pool %r: not registered, nothing "
                "reconciled; fix PORTFOLIO_NODE_NAME or PORTFOLIO_NODE_POOL",
                name,
                node.pool.name,
                pool_name,
            )
            return None
        recovered = node.state == NodeState.LOST
        was = {"address": node.address, **{key: getattr(node, key) for key in capacity}}
        for key, value in capacity.items():
            setattr(node, key, value)
        node.address, node.heartbeat_at, node.agent_version = address, heartbeats.now(), AGENT_VERSION
        now = {"address": node.address, **capacity}
        if now != was:  # where the gateway sends this node's traffic, or what is placed on it: audited
            audit.record(Actor.for_system(f"agent:{name}"), "node.update", node, before=was, after=now)
        if recovered:  # as an operator left it (cordoned, draining), else ready
            node.state, node.state_before_lost = node.state_before_lost or NodeState.READY, ""
        fields = ["address", "heartbeat_at", "agent_version", "state", "state_before_lost", *capacity]
        node.save(update_fields=fields)
        node.refresh_from_db(fields=["heartbeat_at"])
        if recovered:
            audit.record(Actor.for_system(f"agent:{name}"), "node.recover", node, after=node.snapshot())
            replica_meter.node_back(node)
    return node


# --- Reconcile -------------------------------------------------------------------------------------
def _log_path(replica: Replica) -> Path:
    return Path(settings.DATA_DIR) / "engines" / replica.deployment.name / f"replica-{replica.pk}.log"


def _set(replica: Replica, **fields) -> None:
    for key, value in fields.items():
        setattr(replica, key, value)
    replica.save(update_fields=list(fields))


def _taken_by_another(replica: Replica) -> bool:
    """Whether the engine's pid now names a live process that is not that engine (the number reused since it
    exited): its process group is another's, perhaps another replica's engine, and must not be killed."""
    # find first: it reaps the engine's own zombie, when this process started the engine.
    if processes.find(replica.pid, replica.pk) is not None:
        return False
    try:
        # A zombie is the dead engine still: another agent process started it and has not reaped it, and a
        # pid is not reused before it is. Its group is the engine's: what is left of it must be stopped.
        return psutil.Process(replica.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start(replica: Replica, node: Node, lock: Lease | None = None) -> None:
    if replica.generation != replica.deployment.generation:
        # A replica of the previous generation (a restart or a version change under way) is not started
        # again: it would start the deployment's new version and engine arguments in the room reserved for
        # the old ones (a larger model in a smaller reservation, another GPU share). It stops; the
        # deployment's plan starts one of the current generation in its place.
        _set(replica, desired=DesiredState.STOPPED, state=ReplicaState.STOPPED, pid=None, next_start_at=None)
        replica_meter.stopped(replica.pk)
        event(
            replica,
            "stopped",
            f"Not started again: it is of generation {replica.generation}, the deployment has moved to "
            f"{replica.deployment.generation}; a replica of the new one replaces it.",
        )
        return
    try:
        _launch(replica, node, lock)
    except agent_lock.LockLost:
        raise  # not this start's failure: the replica is the new lock holder's to start
    except CorruptArtifact as exc:
        _set(replica, state=ReplicaState.FAILED, state_detail=f"artifact corrupted: {exc}")
        replica_meter.stopped(replica.pk)
        event(replica, "failed", f"Cannot start: stored files are corrupted ({exc}).")
    except Exception as exc:  # noqa: BLE001 - any other failure to start: backed off, then failed
        # (a missing engine Python, no free port, the store unreachable): retried with back-off and said on
        # the timeline, never a replica left pending and re-tried at every heartbeat.
        logger.exception("starting replica %s on %s failed", replica.pk, node.name)
        replica.pid = None  # a pid it still names is an earlier engine's, gone: not one to signal
        _crashed(replica, f"Cannot start the engine: {type(exc).__name__}: {str(exc)[:200]}")


def _launch(replica: Replica, node: Node, lock: Lease | None) -> None:
    deployment = replica.deployment
    # Only the base's files: the adapters are hot-loaded once the engine is ready (adapter_sync), each copied
    # then. Given as --lora-modules, one the engine could not load crashed every start, base model and all.
    attached = list(deployment.adapters.select_related("version__artifact"))
    for adapter in attached:  # copied while the engine boots: it is not ready before they are loaded
        with contextlib.suppress(Exception):  # its manifest unreadable, no thread: said when it is loaded
            prefetch.begin(adapter.version)
    model_dir = prefetch.local_copy(deployment.version)
    if model_dir is None:
        _copying(replica, node)
        return
    adapters = [adapter.name for adapter in attached]
    port = processes.free_port(node.address)
    args = engine_args.for_deployment(deployment)
    launch = engine_args.build(
        python=settings.ENGINE_PYTHON[deployment.pool.kind],
        pool_kind=deployment.pool.kind,
        args=args,
        model_dir=model_dir,
        served_name=deployment.name,
        host=node.address,
        port=port,
        adapters=adapters,
        gpu_indices=replica.gpu_indices,
        api_key=engine_key(replica.pk),
        task=deployment.version.model.task,
        cpu_ids=replica.cpu_ids,
        kv_cache_bytes=replica.kv_cache_bytes,
        media_hosts=settings.GATEWAY_IMAGE_HOSTS,
    )
    agent_lock.ensure_held(lock)  # the download above may have outlasted the lock
    pid = processes.start(launch.argv, launch.env, replica.pk, _log_path(replica))
    try:
        _set(
            replica,
            pid=pid,
            port=port,
            host=node.address,
            state=ReplicaState.STARTING,
            started_at=timezone.now(),
            state_detail="",
            loaded_adapters=[],
            adapter_versions={},
            last_health_at=None,  # the engine before it answered, not this one
            next_start_at=None,
        )
        replica_meter.started(replica)
        # Where it listens (host, port, pid) is for pool managers: the timeline is read by every team member.
        bound = launch.env.get("VLLM_CPU_OMP_THREADS_BIND") if replica.cpu_ids else None
        pinned = f", threads bound to cores {bound}" if bound else ""
        event(replica, "started", f"Engine started on {node.name}{pinned}.")
    except BaseException:
        # The engine runs but the database may not say so: the failed start is retried after back-off, and
        # an engine nobody knows of would keep its port, memory and GPUs beside the one started then.
        processes.kill(pid)
        raise


def _copying(replica: Replica, node: Node) -> None:
    """Its files are still being copied to the node (``prefetch``): pending until a later pass starts it."""
    detail = f"Copying the model's files to {node.name}; the engine starts once they are here."
    if replica.state != ReplicaState.PENDING or replica.state_detail != detail:
        _set(replica, state=ReplicaState.PENDING, state_detail=detail, pid=None)
        replica_meter.stopped(
            replica.pk
        )  # an engine adopted after a reboot waits too: not running, not billed
        event(replica, "copying", detail)


def _crashed(replica: Replica, why: str) -> None:
    if replica.pid and not _taken_by_another(replica):
        # The engine led its own process group: take down what is left of it (workers of a killed server).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(replica.pid, signal.SIGKILL)
    replica_meter.stopped(replica.pk)
    tail = processes.log_tail(_log_path(replica))
    restarts = replica.restarts + 1
    if restarts > settings.ENGINE_MAX_RESTARTS:
        _set(
            replica,
            state=ReplicaState.FAILED,
            restarts=restarts,
            pid=None,
            log_tail=tail,
            state_detail=f"{why}; gave up after {restarts - 1} restarts",
        )
        event(
            replica,
            "failed",
            f"{why}. Gave up after {restarts - 1} restarts: restart the deployment to retry.",
        )
        return
    delay = min(300, settings.ENGINE_RESTART_BACKOFF * 2 ** (restarts - 1))
    _set(
        replica,
        state=ReplicaState.BACKOFF,
        restarts=restarts,
        pid=None,
        log_tail=tail,
        state_detail=why,
        next_start_at=timezone.now() + timedelta(seconds=delay),
    )
    event(replica, "crashed", f"{why}. Restart {restarts} in {delay}s.")


# How long a replica stays ready before its earlier restarts stop counting towards ENGINE_MAX_RESTARTS.
STABLE_AFTER = timedelta(minutes=10)


def _ensure_running(
    replica: Replica, node: Node, *, agent_start: bool = False, lock: Lease | None = None
) -> None:
    now = timezone.now()
    process = processes.find(replica.pid, replica.pk)
    if (
        process is None
        and agent_start
        and replica.state
        in (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.BACKOFF)
    ):
        event(replica, "adopt", "Engine was not running when the agent started; starting it.")
        _start(replica, node, lock)
        return
    if process is None:
        if replica.state == ReplicaState.PENDING or (
            replica.state == ReplicaState.BACKOFF and replica.next_start_at and replica.next_start_at <= now
        ):
            _start(replica, node, lock)
        elif replica.state in (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY):
            _crashed(replica, "Engine process exited")
        return
    tail = processes.log_tail(_log_path(replica))
    if tail != replica.log_tail:
        _set(replica, log_tail=tail)  # for the deployment page's log view
    health = processes.probe(replica.base_url, engine_key(replica.pk))
    if health == processes.WRONG_KEY:
        _rekey(replica, node, process, lock)
        return
    if health == processes.HEALTHY:
        if replica.state != ReplicaState.READY:
            starting = replica.state == ReplicaState.STARTING
            if starting and _adapters_pending(replica, now):
                return
            _set(replica, state=ReplicaState.READY, ready_at=now, last_health_at=now, state_detail="")
            event(replica, "ready", "Replica ready.")
            if starting:
                return  # its adapters were just loaded
        elif replica.restarts and replica.ready_at and now - replica.ready_at >= STABLE_AFTER:
            # Ready long enough: earlier crashes are forgiven, so the restart limit counts crashes in a row
            # (a replica that crashes once a week is not given up on) and the next back-off starts short.
            _set(replica, last_health_at=now, restarts=0)
        else:
            _set(replica, last_health_at=now)
        adapter_sync.sync(replica)
        return
    answered = replica.last_health_at and replica.started_at and replica.last_health_at >= replica.started_at
    if replica.state == ReplicaState.STARTING and not answered:  # one that answered, loading adapters: grace
        if replica.started_at and now - replica.started_at > timedelta(seconds=settings.ENGINE_START_TIMEOUT):
            processes.stop(process)
            _crashed(replica, f"Engine did not become healthy within {settings.ENGINE_START_TIMEOUT}s")
        return
    if replica.state == ReplicaState.READY:
        _set(replica, state=ReplicaState.UNHEALTHY, state_detail="health check failing")
        event(replica, "unhealthy", "Health check failing.")
        return
    if replica.last_health_at is None or now - replica.last_health_at > timedelta(
        seconds=settings.ENGINE_UNHEALTHY_GRACE
    ):
        processes.stop(process)
        _crashed(replica, "Engine stayed unhealthy")


def _adapters_pending(replica: Replica, now) -> bool:
    """Whether a new engine, answering, waits for its adapters before it takes traffic (and a rolling change
    stops an old replica for it): it does while their files are copied or a load failed for a passing reason
    (``adapter_sync.sync``), not for one refused (the base serves without it), and for
    ``ENGINE_START_TIMEOUT`` from its start at most. Ready first, a rolling change left an adapter's endpoint
    with nowhere to go until its files were copied."""
    waiting = adapter_sync.sync(replica)
    if not waiting:
        return False
    names = ", ".join(waiting)
    if replica.started_at and now - replica.started_at > timedelta(seconds=settings.ENGINE_START_TIMEOUT):
        late = f"Adapters {names} not loaded within {settings.ENGINE_START_TIMEOUT}s of the start"
        event(replica, "adapter_failed", f"{late}: ready without them; loaded once they can be.")
        return False
    # Answered before the loads, which may have taken a while (30 s a load that timed out): the grace counts
    # from their end.
    detail = f"Engine up; loading adapters {names} before it takes traffic."
    _set(replica, last_health_at=timezone.now(), state_detail=detail)
    return True


# The detail of a replica restarted because it refused the current key, until it is ready again.
REKEYED = "restarted with the current engine key"


def _rekey(replica: Replica, node: Node, process, lock: Lease | None) -> None:
    """The engine refuses the key derived now: PORTFOLIO_ENGINE_KEY_SECRET was rotated after it started, so
    neither this agent nor the gateway (which derives the same key) can use it. Restart it with the current
    key; this is how a rotation reaches running engines, so it is not counted as a crash, unless the engine
    refuses even the key it was just restarted with."""
    processes.stop(process)
    if replica.state == ReplicaState.STARTING and replica.state_detail == REKEYED:
        _crashed(replica, "Engine refuses the key it was started with")
        return
    event(
        replica,
        "rekeyed",
        "The engine refused the current engine key (the engine key secret was rotated); "
        "restarting it with the current key.",
    )
    _start(replica, node, lock)
    if replica.state == ReplicaState.STARTING:
        _set(replica, state_detail=REKEYED)


def _stop(replica: Replica, drained: str = "") -> None:
    process = processes.find(replica.pid, replica.pk)
    if process is not None:
        if replica.state != ReplicaState.STOPPING:
            _set(replica, state=ReplicaState.STOPPING)
        processes.stop(process)
        event(replica, "stopped", f"{drained} Engine stopped.".lstrip())
    _set(replica, state=ReplicaState.STOPPED, pid=None)
    replica_meter.stopped(replica.pk)


def _drain(mine: list[Replica], lock: Lease | None) -> dict[int, str | None]:
    """Replicas to stop whose engines run: drained first (draining.py). Their ids, each with how its drain ended
    (None: still draining, left running until a later pass)."""
    now, to_drain = timezone.now(), []
    for replica in mine:
        if replica.desired != DesiredState.STOPPED or replica.state not in (
            ReplicaState.READY,
            ReplicaState.STOPPING,
        ):
            continue
        if processes.find(replica.pid, replica.pk) is None:
            continue
        if replica.drain_started_at is None:  # serving until now, or a stop an agent restart cut short
            detail = "Draining: out of the gateways' tables, finishing the requests in flight."
            _set(replica, state=ReplicaState.STOPPING, state_detail=detail, drain_started_at=now)
        to_drain.append(replica)
    done = draining.settle(to_drain, lambda: agent_lock.ensure_held(lock)) if to_drain else {}
    return {replica.pk: done.get(replica.pk) for replica in to_drain}


@prefetch.one_wait()  # the pass waits for copies WAIT_SECONDS in all, not per replica or adapter
def reconcile_node(name: str, *, agent_start: bool = False, lock: Lease | None = None) -> None:
    """``agent_start``: the agent loop's first reconcile since its worker started. An engine missing then is not
    a crash the agent saw (the machine rebooted, or `make run` stopped it) and is started again without counting,
    back-off or not. Never from a task: a pool child of the worker is new too, and an engine it finds dead has
    crashed.

    ``lock``: the node's reconcile lock held for this pass; once it is lost, ``agent_lock.LockLost`` is raised
    before the next replica is touched, engine started or orphan killed, so two agents never act at once."""
    node = Node.objects.select_related("pool").filter(name=name).first()
    if node is None:
        return
    mine = list(
        node.replicas.select_related("deployment__version", "deployment__pool").exclude(
            state=ReplicaState.STOPPED
        )
    )
    engine_sweep.stop_unrecorded(mine, lock)
    drained = _drain(mine, lock)
    wanted_ids = set()
    for replica in mine:
        agent_lock.ensure_held(lock)
        try:
            if replica.desired == DesiredState.STOPPED:
                ended = drained.get(replica.pk, "")
                if ended is None:  # draining still, its engine serving what it holds: no orphan
                    wanted_ids.add(replica.pk)
                else:
                    _stop(replica, ended)
            elif replica.state != ReplicaState.FAILED:
                wanted_ids.add(replica.pk)
                _ensure_running(replica, node, agent_start=agent_start, lock=lock)
            else:
                wanted_ids.add(replica.pk)
        except agent_lock.LockLost:
            raise
        except Exception:
            logger.exception("reconciling replica %s on %s failed", replica.pk, name)
    engine_sweep.stop_orphans(node, wanted_ids, lock)


def heartbeat(name: str, *, agent_start: bool = False) -> bool:
    """Register, then reconcile unless another process holds the node's lock; whether it reconciled (not when
    the lock was lost mid-pass: the next heartbeat takes it again and does the rest)."""
    if register(name, settings.NODE_POOL, settings.NODE_ADDRESS) is None:
        return False  # said in the log; retried at the next beat (the loop waits a beat after each)
    lock = agent_lock.acquire_node_lock(name)
    if lock is None:
        return False
    try:
        with agent_lock.kept_alive(name, lock):
            reconcile_node(name, agent_start=agent_start, lock=lock)
    except agent_lock.LockLost:
        logger.error("node %s: reconcile lock lost to another process; this reconcile stopped midway", name)
        return False
    finally:
        with contextlib.suppress(Exception):
            lock.release()
    return True

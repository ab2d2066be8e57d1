"""The node's reconcile lock (one reconcile at a time per node), and the heartbeat kept while one runs.

The lock is a lease (``portfolio.leases``): its holder is named by host, pid and the process's start time, so
an agent killed mid-reconcile does not keep the next one on this machine waiting for the lock to time out, nor
does one restarted in its container (pid 1 again, on the same hostname).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db import connection

from portfolio.leases import Lease
from serving import heartbeats
from serving.choices import NodeState
from serving.models import Node

logger = logging.getLogger("serving.agent")

LOCK_TIMEOUT = 600  # seconds a reconcile lock outlives its last renewal
# The longest a reconcile is kept alive by its heartbeat thread (a large model downloaded on a slow link).
RECONCILE_KEPT_FOR = timedelta(hours=2)


class LockLost(Exception):
    """The node's reconcile lock went to another process: this reconcile must not act on the node any more."""


def acquire_node_lock(name: str) -> Lease | None:
    """The node's reconcile lock, or None while a live process holds it."""
    lock = Lease(f"node-reconcile:{name}", seconds=LOCK_TIMEOUT)
    return lock if lock.acquire(wait=False) else None


def ensure_held(lock: Lease | None) -> None:
    """Raise ``LockLost`` before a reconcile's next action once its lock is known lost (``None``: a reconcile
    run without the lock, as tests do). Unrenewed for its whole timeout counts as lost: another agent may
    have taken it without this one's renewals noticing (Redis unreachable, or no longer kept alive)."""
    if lock is not None and (lock.lost.is_set() or time.monotonic() - lock.renewed_at >= lock.seconds):
        raise LockLost(lock.key)


def beat(name: str) -> None:
    """Only the heartbeat, cheap: a lost node comes back through ``register``, which audits it."""
    Node.objects.filter(name=name).exclude(state=NodeState.LOST).update(heartbeat_at=heartbeats.now())


@contextlib.contextmanager
def kept_alive(name: str, lock: Lease) -> Iterator[None]:
    """While a reconcile runs, beat and renew the reconcile lock from another thread.

    A reconcile can take minutes (a model downloaded, engines stopped with a grace, slow probes): a node
    silent for NODE_LOST_AFTER_SECONDS is marked lost, its replicas are forgotten and their engines then
    killed as orphans; and a lock that timed out would let a second reconcile start the same engines.
    Kept for ``RECONCILE_KEPT_FOR`` at most: a reconcile hung past it (a read that never ends) stops beating,
    so the node is marked lost and its replicas placed elsewhere, and its lock lapses."""
    done = threading.Event()
    until = time.monotonic() + RECONCILE_KEPT_FOR.total_seconds()

    def keep() -> None:
        try:
            while not done.wait(settings.NODE_HEARTBEAT_SECONDS):
                if time.monotonic() >= until:
                    logger.error(
                        "node %s: a reconcile has run for %s; no longer beating for it (the node will be "
                        "marked lost)",
                        name,
                        RECONCILE_KEPT_FOR,
                    )
                    return
                try:
                    beat(name)
                    # Its full timeout again, from now; once lost, never taken back by this reconcile, which
                    # stops before its next action (``ensure_held``).
                    if not lock.lost.is_set() and not lock.renew():
                        logger.error(
                            "node %s: the reconcile lock went to %s; this reconcile stops before its next action",
                            name,
                            lock.holder(),
                        )
                except Exception:
                    logger.exception("node %s: heartbeat during the reconcile failed", name)
        finally:
            connection.close()  # this thread's own connection

    keeper = threading.Thread(target=keep, name=f"node-heartbeat-{name}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join()

"""The node agent's heartbeat loop, inside its Celery worker's main process.

Started when a worker launched as a node agent (``PORTFOLIO_NODE_AGENT=1``: `portfolio node-agent`, or
the local worker of `portfolio run`) is ready; every few seconds it heartbeats and reconciles this
machine's engines. Engines it starts run in their own sessions and outlive the worker.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections

from portfolio.registry import cache_eviction

logger = logging.getLogger(__name__)
_stop = threading.Event()
# Called with the node's name after each heartbeat, each throttling itself: copies of deleted artifacts
# removed from this machine's cache; work of the layers above (training stops trainers no watcher is left for,
# ``training.trainer_sweep``).
PASS_HOOKS: list[Callable[[str], None]] = [cache_eviction.evict_due]


def _loop(name: str) -> None:
    from serving import agent

    logger.info("node agent %s: heartbeat every %ss", name, settings.NODE_HEARTBEAT_SECONDS)
    started = False  # until this loop's first reconcile has run (a task of the worker may hold the lock)
    while not _stop.is_set():
        try:
            close_old_connections()
            started = agent.heartbeat(name, agent_start=not started) or started
        except Exception:
            logger.exception("node agent %s: heartbeat failed", name)
        for hook in PASS_HOOKS:
            try:
                hook(name)
            except Exception:
                logger.exception("node agent %s: %s failed", name, getattr(hook, "__qualname__", hook))
        _stop.wait(settings.NODE_HEARTBEAT_SECONDS)


@worker_ready.connect
def start_agent_loop(**kwargs) -> None:
    if os.environ.get("PORTFOLIO_NODE_AGENT") != "1":
        return
    threading.Thread(target=_loop, args=(settings.NODE_NAME,), name="node-agent", daemon=True).start()


@worker_shutdown.connect
def stop_agent_loop(**kwargs) -> None:
    _stop.set()

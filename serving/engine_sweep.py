"""Engines on this machine that the database does not account for, stopped by the agent's reconcile.

- Before the replicas are reconciled: an engine of a replica this node runs whose pid the replica does not
  record. An agent killed between starting an engine and recording it leaves one; started again, it would
  start another beside it (its port, memory and GPUs held twice, the first unknown to everyone).
- After: engines of replicas no longer wanted here (deleted, stopped, moved to another node), and what is left
  of an engine whose leader died (its engine core, holding the model's memory), wanted or not.

Both run under the node's reconcile lock (``agent_lock``): one agent acts at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings

from portfolio.leases import Lease
from serving import agent_lock, processes
from serving.choices import DesiredState, ReplicaState
from serving.models import Node, Replica

logger = logging.getLogger("serving.agent")


def stop_unrecorded(replicas: Iterable[Replica], lock: Lease | None) -> None:
    """Stop every engine of ``replicas`` (this node's, not stopped) other than the one each records."""
    recorded = {replica.pk: replica.pid for replica in replicas}
    for replica_id, process in processes.all_engines(under=Path(settings.DATA_DIR)):
        if replica_id in recorded and process.pid != recorded[replica_id]:
            agent_lock.ensure_held(lock)
            logger.warning(
                "stopping an engine of replica %s (pid %s) that it does not record (it names pid %s): its "
                "start was never recorded",
                replica_id,
                process.pid,
                recorded[replica_id],
            )
            processes.stop(process)


def stop_orphans(node: Node, wanted_ids: set[int], lock: Lease | None) -> None:
    """Stop every engine whose replica is not one this node should run."""
    for replica_id, process in processes.all_engines(under=Path(settings.DATA_DIR)):
        if (
            replica_id not in wanted_ids
            and not Replica.objects.filter(pk=replica_id, node=node, desired=DesiredState.RUNNING)
            .exclude(state=ReplicaState.STOPPED)
            .exists()
        ):
            agent_lock.ensure_held(lock)
            logger.warning("stopping orphan engine of replica %s (pid %s)", replica_id, process.pid)
            processes.stop(process)
    for replica_id, process in processes.leaderless(under=Path(settings.DATA_DIR)):
        agent_lock.ensure_held(lock)
        logger.warning(
            "stopping what is left of an engine of replica %s whose leader is gone (pid %s)",
            replica_id,
            process.pid,
        )
        processes.stop(process)

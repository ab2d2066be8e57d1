"""Trainers no watcher is left for, stopped by this machine's node agent.

A fine-tune's trainer runs in a session of its own, watched by the task that started it (or adopted it) in a
pool process of the node agent, which holds the attempt's lease (``training.tasks.attempt_lease``). When that watcher
dies without the trainer (the agent's processes killed outright, its pool process killed by the OOM killer),
the trainer goes on unwatched: nobody reads its outcome, counts its compute or stops it on a cancel, and once
the job's heartbeat is stale the reaper requeues it, perhaps onto this node again, on the same GPUs and into
the same work folder, beside the old trainer.

Every ``SWEEP_SECONDS`` the agent's loop looks at the trainers working in its data folder and stops (SIGTERM,
SIGKILL after a grace) each one that no live attempt owns: its job gone, ended, placed on another node, or
running another trainer (``pid``), or its attempt's lease unheld at two looks ``TASK_LEASE_SECONDS`` apart (a
lease lapses that long after its watcher's last renewal; a live watcher whose lease lapsed while Redis was
away takes it back within seconds, ``Lease.regain``). A trainer started less than ``YOUNG_SECONDS`` ago is left alone (its pid may not be recorded
yet), and so is one whose lease is held: a pool process that died has its task redelivered at once, and the
redelivery adopts the trainer by taking over the dead holder's lease (``training.tasks.run_job``). The job's
next attempt resumes from the last checkpoint. Merges need none of this: they end with their watcher
(``training.orphans``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import psutil
from django.conf import settings

from serving import processes
from training.choices import JobStatus
from training.models import FineTuneJob
from training.tasks import attempt_lease

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 30.0
YOUNG_SECONDS = 60.0
_last_sweep = 0.0
# (job id, attempt) -> when its lease was first seen unheld, among the trainers of the last pass.
_unheld_since: dict[tuple[int, int], float] = {}


def _job_id(process: psutil.Process) -> int | None:
    try:
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    # ``training.tasks._start_child``: ``python -m training.runner <job id>``.
    if argv[-2:-1] == ["training.runner"] and argv[-1].isdigit():
        return int(argv[-1])
    return None


def _why_orphaned(
    process: psutil.Process, job_id: int, node_name: str, now: float, unheld: dict
) -> str | None:
    """Why no live attempt owns this trainer; None when one may."""
    job = FineTuneJob.objects.select_related("node").filter(pk=job_id).first()
    if job is None:
        return "its job no longer exists"
    if job.status != JobStatus.RUNNING:
        return f"its job is {job.status}"
    if job.node is None or job.node.name != node_name:
        return "its job runs on another node now"
    if job.pid != process.pid:
        return f"its job's attempt {job.attempt} runs another trainer"
    if attempt_lease(job).holder() is None:
        first = unheld[(job.pk, job.attempt)] = _unheld_since.get((job.pk, job.attempt), now)
        if now - first >= settings.TASK_LEASE_SECONDS:
            return f"no watcher has held attempt {job.attempt}'s lease for {settings.TASK_LEASE_SECONDS} s"
    return None


def stop_orphans(node_name: str, *, now: float | None = None) -> list[int]:
    """Stop the trainers under this node's data folder that no live attempt owns; their pids."""
    now = time.time() if now is None else now
    stopped = []
    unheld: dict[tuple[int, int], float] = {}
    for process in processes.trainers_under(Path(settings.DATA_DIR) / "training"):
        job_id = _job_id(process)
        try:
            young = now - process.create_time() < YOUNG_SECONDS
        except psutil.NoSuchProcess:
            continue
        if job_id is None or young:
            continue
        why = _why_orphaned(process, job_id, node_name, now, unheld)
        if why is None:
            continue
        logger.warning("fine-tune #%s: stopping its trainer (pid %s): %s", job_id, process.pid, why)
        processes.stop(process, grace=10)
        stopped.append(process.pid)
    _unheld_since.clear()
    _unheld_since.update(unheld)
    return stopped


def sweep(node_name: str) -> None:
    """The agent loop's hook: ``stop_orphans`` at most every ``SWEEP_SECONDS``."""
    global _last_sweep
    if time.monotonic() - _last_sweep < SWEEP_SECONDS:
        return
    _last_sweep = time.monotonic()
    stop_orphans(node_name)

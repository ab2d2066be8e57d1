"""What training hands to billing's meters: its jobs' compute, and who keeps its artifacts.

The compute meter: each attempt of a fine-tune or distillation job (its evaluation runs inside
it) is one interval of billing's ledger, charged to the job's owning team on its pool.

- An attempt opens when its node's task claims the job (``attempt_started``) and closes when its watcher
  sees the trainer end, when the job finishes (``finetune.finish``), or, for a node gone silent, at the
  job's last heartbeat (the reaper): whichever comes first, each idempotent under the attempt's key
  ``job:<kind>:<id>:<attempt>``.
- What is held: on a GPU pool the GPUs it claims (whole, no replica shares them); on a CPU pool its
  node's cores (the trainer's threads use them all, as the job's own ``cpu_core_seconds`` counts).
- A merge (``training.merges``) is one interval too, ``job:merge:<id>:1``, from its claim to its process's
  end (or its last heartbeat), charged the same way on the pool of the node its control worker runs on:
  its cores (peft merges on the CPU). A control worker on a machine that is no node of a pool has no
  price to charge at: the merge's ``compute_seconds`` is still recorded on the job.

Storage: the registry's storage meter charges artifacts to the teams that keep them; dataset versions and
job checkpoints are training's (``kept_artifacts``, registered in ``TrainingConfig.ready``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from portfolio.billing import meters
from portfolio.billing.choices import ComputeKind
from serving.choices import PoolKind
from training.models import DatasetVersion, FineTuneJob, MergeJob


def kind(job: FineTuneJob) -> str:
    return "distillation" if job.is_distillation else "finetune"


def key(job: FineTuneJob, attempt: int | None = None) -> str:
    return f"job:{kind(job)}:{job.pk}:{job.attempt if attempt is None else attempt}"


def label(job: FineTuneJob) -> str:
    return f"{'distillation' if job.is_distillation else 'fine-tune'} #{job.pk}"


def attempt_started(job: FineTuneJob, at: datetime) -> None:
    """The job's current attempt began on its node at ``at`` (a second call for it changes nothing)."""
    job = FineTuneJob.objects.select_related("owner_team", "pool", "node").get(pk=job.pk)
    on_gpus = job.pool.kind == PoolKind.GPU
    meters.open_interval(
        key=key(job),
        kind=ComputeKind.JOB,
        team_id=job.owner_team_id,
        department_id=job.owner_team.department_id,
        subject=label(job),
        pool_id=job.pool_id,
        pool=job.pool.name,
        gpus=len(job.gpu_indices or []) if on_gpus else 0,
        cpu_cores=0 if on_gpus or job.node is None else job.node.cpu_cores,
        memory_bytes=0,
        started_at=at,
    )


def attempt_ended(job: FineTuneJob, at: datetime, attempt: int | None = None) -> bool:
    """The attempt (the job's current one unless named) ended at ``at``; False if it was not open."""
    return meters.close_interval(key(job, attempt), at)


MERGE_KEYS = "job:merge:"


def merge_key(job_id: int) -> str:
    return f"{MERGE_KEYS}{job_id}:1"


def open_merges() -> set[int]:
    """The merge jobs whose interval is still open."""
    return {int(key.split(":")[2]) for key in meters.open_keys(ComputeKind.JOB) if key.startswith(MERGE_KEYS)}


def merge_started(job: MergeJob, at: datetime) -> bool:
    """The merge's process starts at ``at`` on ``job.node``; False (nothing metered) if it runs on no node."""
    node = job.node
    if node is None:
        return False
    meters.open_interval(
        key=merge_key(job.pk),
        kind=ComputeKind.JOB,
        team_id=job.owner_team_id,
        department_id=job.owner_team.department_id,
        subject=f"merge #{job.pk}",
        pool_id=node.pool_id,
        pool=node.pool.name,
        gpus=0,
        cpu_cores=node.cpu_cores,
        memory_bytes=0,
        started_at=at,
    )
    return True


def merge_ended(job_id: int, at: datetime) -> bool:
    return meters.close_interval(merge_key(job_id), at)


def kept_artifacts() -> Iterable[tuple[str, int, datetime]]:
    """(artifact id, owning team id, since) of every dataset version's files and every job's checkpoint."""
    yield from DatasetVersion.objects.values_list("artifact_id", "dataset__owner_team_id", "created_at")
    yield from FineTuneJob.objects.exclude(checkpoint=None).values_list(
        "checkpoint_id", "owner_team_id", "created_at"
    )

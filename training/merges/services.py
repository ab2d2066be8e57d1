"""Merge jobs: started from the adapter's page or the API (through ``portfolio.registry.merging``, which
this app hooks into in ``TrainingConfig.ready``), run by a control worker, reaped when their worker dies.

Contract: a merge ends registered and succeeded in one transaction, or failed/errored with the reason and
nothing registered; a job is never left running (``reap_stale``)."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Conflict, DomainError
from portfolio.registry import merging
from portfolio.registry.inspection import InspectionError
from portfolio.registry.models import ModelVersion
from portfolio.registry.storage import CorruptArtifact
from training.choices import JobStatus
from training.merges.models import IN_FLIGHT, MergeJob

SYSTEM = "training.merge"


class _Abandoned(Exception):
    """The job was ended by someone else (the reaper) while the weights were merged: nothing is registered."""


def start_merge(actor: Actor, adapter: ModelVersion) -> merging.MergeStarted:
    """``portfolio.registry.merging.ADAPTER_MERGERS``: called in ``request_merge``'s transaction, which has
    checked the permission and the adapter and holds its row."""
    in_flight = MergeJob.objects.filter(adapter=adapter, status__in=IN_FLIGHT).first()
    if in_flight is not None:
        raise Conflict(f"Merge #{in_flight.pk} of {adapter.label} is already {in_flight.status}.")
    job = MergeJob.objects.create(adapter=adapter, owner_team=adapter.model.owner_team, created_by=actor.user)
    audit.record(actor, "model_version.merge_start", job, after=job.snapshot())
    transaction.on_commit(lambda: enqueue(job.pk))
    base = adapter.base_version
    assert base is not None
    return merging.MergeStarted(
        id=job.pk,
        status=job.status,
        message=(
            f"Merging {adapter.label} into {base.label} (merge #{job.pk}): the merged version appears among "
            f"{adapter.model.name}'s versions when it is ready, and is served without LoRA."
        ),
    )


def enqueue(job_id: int) -> None:
    """To the control queue, by the task's name (the task module builds on this one)."""
    current_app.signature("training.merge_adapter", args=[job_id]).apply_async()


def notes(adapter: ModelVersion) -> list[str]:
    """``MERGE_NOTES``: the adapter's merge under way, or its last merge if that one failed."""
    job = MergeJob.objects.filter(adapter=adapter).select_related("output_version").first()
    if job is None or job.status == JobStatus.SUCCEEDED:
        return []
    if job.status in IN_FLIGHT:
        return [f"Merge #{job.pk} is {job.status}: the merged version appears here when it is ready."]
    return [
        f"Merge #{job.pk} {job.status}: {job.status_detail.splitlines()[-1] if job.status_detail else ''}"
    ]


def _finish(job_id: int, status: str, detail: str, output_version: ModelVersion | None = None) -> bool:
    """Compare-and-swap from running, with the audit row of a failure in the same transaction."""
    with transaction.atomic():
        updated = MergeJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
            status=status,
            status_detail=detail[:4000],
            finished_at=timezone.now(),
            output_version=output_version,
        )
        if updated and status != JobStatus.SUCCEEDED:
            job = MergeJob.objects.select_related("adapter__model", "adapter__base_version__model").get(
                pk=job_id
            )
            audit.record(Actor.for_system(SYSTEM), "model_version.merge_failed", job, after=job.snapshot())
    return bool(updated)


@contextlib.contextmanager
def _heartbeat(job_id: int) -> Iterator[None]:
    """Beat while the weights are loaded and merged (minutes for a big model), so the reaper leaves it."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(settings.TRAINING_HEARTBEAT_SECONDS):
                MergeJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"merge-{job_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run(job_id: int) -> str | None:
    """Claim a queued merge and run it to its end; its final status (None: not claimed, a redelivery)."""
    from portfolio.registry.artifacts import materialize_version
    from portfolio.registry.inspection import inspect_directory
    from portfolio.registry.storage import store_directory
    from portfolio.registry.stores import default_store
    from training.merges.weights import merge_directory

    now = timezone.now()
    claimed = MergeJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now
    )
    if not claimed:
        return None
    job = MergeJob.objects.select_related("adapter__model", "adapter__base_version").get(pk=job_id)
    adapter = job.adapter
    try:
        with _heartbeat(job_id):
            base = merging.check_mergeable(adapter)
            base_dir, adapter_dir = materialize_version(base), materialize_version(adapter)
            work_root = Path(settings.DATA_DIR) / "work"
            work_root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=work_root, prefix=f"merge-{job_id}-") as work:
                output = Path(work) / "merged"
                merge_directory(base_dir, adapter_dir, output)
                facts = inspect_directory(output)
                store = default_store()
                manifest = store_directory(store, output)
            with transaction.atomic():
                version = merging.register_merged_version(
                    actor=Actor.for_system(SYSTEM),
                    adapter=adapter,
                    manifest=manifest,
                    facts=facts,
                    store_uri=store.uri(manifest.artifact_id),
                    job_ref=f"merge:{job_id}",
                )
                if not _finish(job_id, JobStatus.SUCCEEDED, f"Registered {version.label}.", version):
                    raise _Abandoned
        return JobStatus.SUCCEEDED
    except _Abandoned:
        return None
    except (DomainError, CorruptArtifact, InspectionError, ValueError, OSError) as exc:
        # Known refusals (the adapter archived meanwhile, damaged files, an adapter peft cannot load).
        _finish(job_id, JobStatus.FAILED, f"{exc.__class__.__name__}: {exc}")
        return JobStatus.FAILED
    except Exception:
        _finish(job_id, JobStatus.ERRORED, traceback.format_exc()[-4000:])
        return JobStatus.ERRORED


def reap_stale(silence: timedelta) -> list[int]:
    """Running merges whose worker stopped beating are failed with the reason: never left running."""
    cutoff = timezone.now() - silence
    reaped = []
    for job_id in MergeJob.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).values_list(
        "pk", flat=True
    ):
        seconds = int(silence.total_seconds())
        if _finish(job_id, JobStatus.FAILED, f"Its worker stopped for over {seconds}s; merge again."):
            reaped.append(job_id)
    return reaped

"""A merge's compute: one interval of billing's ledger on the pool of the node its control worker runs on,
closed when its process ends, at its last heartbeat (the reaper), or at its end when no watcher was left."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from portfolio.billing import charges, money
from portfolio.billing.choices import ComputeKind, LineKind, PriceKind
from portfolio.billing.models import ComputeInterval, Price
from portfolio.registry import merging
from portfolio.registry.storage import store_directory
from portfolio.registry.stores import default_store
from training import metering
from training.choices import JobStatus
from training.merges import services as merges
from training.models import MergeJob

pytestmark = pytest.mark.django_db


def test_a_merge_its_process_ended_with_no_watcher_left_is_billed_to_its_end_not_for_ever(
    versions, engineer, cpu_pool, settings
):
    """The merge process registered its version and ended the job, but its watcher was gone (its worker
    killed in between): nothing closed its compute, which was billed up to now, every month."""
    _, adapter = versions
    settings.NODE_NAME = cpu_pool.nodes.get().name
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    job = merges.claim(job_id)
    metering.merge_started(job, timezone.now() - timedelta(hours=1))
    assert merges.compute(job_id) == JobStatus.SUCCEEDED  # no merges.ended: its watcher died
    ended_at = timezone.now() - timedelta(minutes=30)
    MergeJob.objects.filter(pk=job_id).update(finished_at=ended_at)

    assert merges.reap_stale(timedelta(minutes=2)) == []

    assert ComputeInterval.objects.get(key=f"job:merge:{job_id}:1").ended_at == ended_at
    assert MergeJob.objects.get(pk=job_id).status == JobStatus.SUCCEEDED


def test_a_merge_is_billed_as_training_compute_on_the_pool_of_the_node_it_ran_on(
    versions, engineer, cpu_pool, settings, client, org, team
):
    _, adapter = versions
    node = cpu_pool.nodes.get()
    settings.NODE_NAME = node.name  # this control worker runs on a node of the pool
    Price.objects.create(
        kind=PriceKind.POOL,
        subject_id=str(cpu_pool.pk),
        subject_name=cpu_pool.name,
        effective_from=timezone.now() - timedelta(days=400),
        cpu_core_hour=Decimal("0.60"),
    )
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    job = merges.claim(job_id)
    assert job is not None and job.node == node
    began = timezone.now() - timedelta(minutes=6)
    assert metering.merge_started(job, began)
    assert merges.compute(job_id) == JobStatus.SUCCEEDED
    # Its process ended six minutes after it began (the task closes the interval when it sees that).
    assert metering.merge_ended(job_id, began + timedelta(minutes=6))
    assert merges.ended(job_id, 360.0, "exited") == JobStatus.SUCCEEDED

    run = ComputeInterval.objects.get(key=f"job:merge:{job_id}:1")
    assert (run.kind, run.team_id, run.department_id, run.subject) == (
        ComputeKind.JOB,
        team.pk,
        team.department_id,
        f"merge #{job_id}",
    )
    assert (run.pool_id, run.gpus, run.cpu_cores, run.ended_at) == (
        cpu_pool.pk,
        0,
        4,
        began + timedelta(minutes=6),
    )
    lines = [
        line
        for line in charges.charges(team.department_id, money.month_start(began), timezone.now())
        if line.subject == f"merge #{job_id}"
    ]
    assert [(line.kind, line.detail, line.unit, line.quantity, line.amount) for line in lines] == [
        (LineKind.JOB, "on cpu", "core-hours", Decimal("0.4"), Decimal("0.24"))
    ]
    job.refresh_from_db()
    assert (job.compute_seconds, job.cpu_core_seconds) == (360.0, 1440.0)
    client.force_login(org["engineer"])
    shown = client.get(f"/api/v1/training/merges/{job_id}").json()
    assert (shown["node"], shown["compute_seconds"], shown["compute_cost"]) == (node.name, 360.0, "0.24")


def test_a_merge_on_a_machine_that_is_no_node_records_its_time_and_bills_nothing(
    versions, engineer, settings
):
    _, adapter = versions
    settings.NODE_NAME = "control-only"
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    job = merges.claim(job_id)
    assert job is not None and job.node is None
    assert not metering.merge_started(job, timezone.now())
    assert merges.compute(job_id) == JobStatus.SUCCEEDED
    merges.ended(job_id, 12.5, "exited")
    assert MergeJob.objects.get(pk=job_id).compute_seconds == 12.5
    assert not ComputeInterval.objects.filter(key__startswith=f"job:merge:{job_id}:").exists()


def test_the_reaper_bills_a_merge_to_its_last_heartbeat_and_deletes_what_it_wrote(
    versions, engineer, cpu_pool, settings, tmp_path
):
    _, adapter = versions
    settings.NODE_NAME = cpu_pool.nodes.get().name
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    job = merges.claim(job_id)
    metering.merge_started(job, timezone.now() - timedelta(hours=1))
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"weights of a merge whose worker died")
    store_directory(default_store(), half, before_write=lambda written: merges._note_upload(job_id, written))
    (written,) = MergeJob.objects.get(pk=job_id).upload["blobs"]
    last_beat = timezone.now() - timedelta(minutes=30)
    MergeJob.objects.filter(pk=job_id).update(heartbeat_at=last_beat)

    assert merges.reap_stale(timedelta(minutes=2)) == [job_id]

    assert MergeJob.objects.get(pk=job_id).status == JobStatus.FAILED
    assert ComputeInterval.objects.get(key=f"job:merge:{job_id}:1").ended_at == last_beat
    assert not default_store().has_blob(written)

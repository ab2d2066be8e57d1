"""Real LoRA fine-tuning of SmolLM2-135M on a small ticket-routing dataset, run as the node task runs it:
a trainer child process in its own process group, watched, cancellable, failing cleanly when killed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from serving.choices import PoolKind
from serving.models import ComputePool, Node
from tests.conftest import actor_for
from tests.training.conftest import upload
from training import finetune, job_reaper, services
from training.choices import JobStatus, Method
from training.models import EvalRun, FineTuneJob
from training.tasks import run_job

pytestmark = pytest.mark.django_db(transaction=True)
DEMO_DATA = Path(__file__).resolve().parents[2] / "training" / "demo_data" / "ticket_routing.jsonl"


@pytest.fixture
def setup(org, team):
    call_command("seed_demo")
    call_command("import_demo_model")
    base = ModelVersion.objects.get(model__name=MODEL_NAME, status=VersionStatus.READY)
    engineer = actor_for(org["engineer"])
    dataset = services.create_dataset(actor=engineer, owner_team=team, name="ticket-routing", kind="chat")
    version, _ = upload(engineer, dataset, DEMO_DATA.read_bytes(), base_version=base, eval_fraction=0.1)
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    Node.objects.create(
        name="trainer-node",
        pool=pool,
        address="127.0.0.1",
        cpu_cores=2,
        memory_bytes=2**34,
        heartbeat_at=timezone.now(),
    )
    # The platform model the team registers results under (owned by the team).
    from portfolio.registry import services as registry

    target = registry.create_model(actor=engineer, name="ticket-router", owner_team=team)
    return {"base": base, "dataset_version": version, "pool": pool, "engineer": engineer, "target": target}


def _run_in_thread(job_id: int) -> None:
    from django.db import connections

    try:
        run_job(job_id)
    finally:
        connections.close_all()


def _start(setup, **hyperparameters) -> FineTuneJob:
    return finetune.start_job(
        actor=setup["engineer"],
        base_version=setup["base"],
        dataset_version=setup["dataset_version"],
        pool=setup["pool"],
        target_model=setup["target"],
        hyperparameters=hyperparameters,
    )


def test_lora_training_lowers_the_loss_registers_the_adapter_and_beats_the_base(setup):
    job = _start(setup, epochs=2, checkpoint_every=0)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, f"{job.status_detail}\n{job.log_tail}"
    first, last = job.loss_curve[0][1], job.loss_curve[-1][1]
    assert last < first / 4, f"loss {first} -> {last}"
    assert job.eval_curve and job.compute_seconds > 0 and job.cpu_core_seconds >= job.compute_seconds
    adapter = job.output_version
    assert (adapter.kind, adapter.base_version, adapter.parent_version, adapter.source) == (
        VersionKind.ADAPTER,
        setup["base"],
        setup["base"],
        Source.FINE_TUNE,
    )
    assert (
        adapter.model == setup["target"] and adapter.metrics["dataset_version"] == setup["dataset_version"].pk
    )
    assert "ticket-routing" in adapter.model_card and adapter.artifact.health == "ok"
    tuned = EvalRun.objects.get(version=adapter)
    baseline = EvalRun.objects.get(version=setup["base"], dataset_version=setup["dataset_version"])
    assert tuned.metrics["accuracy"] > baseline.metrics["accuracy"], (tuned.metrics, baseline.metrics)
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"training.job_start", "training.job_succeeded", "model_version.register"} <= actions


def test_cancelling_a_running_job_leaves_no_process_behind(setup):
    job = _start(setup, epochs=20, checkpoint_every=0)
    watcher = threading.Thread(target=_run_in_thread, args=(job.pk,))
    watcher.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not FineTuneJob.objects.get(pk=job.pk).step:
        time.sleep(0.5)
    pid = FineTuneJob.objects.get(pk=job.pk).pid
    assert pid and psutil.pid_exists(pid)
    finetune.cancel_job(actor=setup["engineer"], job=job)
    watcher.join(timeout=120)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.output_version is None
    time.sleep(0.5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_trainer_fails_cleanly_with_the_reason_after_its_last_attempt(setup, settings):
    settings.TRAINING_MAX_ATTEMPTS = 1
    job = _start(setup, epochs=20, checkpoint_every=0)
    watcher = threading.Thread(target=_run_in_thread, args=(job.pk,))
    watcher.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not FineTuneJob.objects.get(pk=job.pk).pid:
        time.sleep(0.2)
    os.kill(FineTuneJob.objects.get(pk=job.pk).pid, signal.SIGKILL)
    watcher.join(timeout=120)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "signal 9" in job.status_detail
    assert job.finished_at is not None and job.pid is None


def test_qlora_is_refused_on_a_cpu_pool(setup):
    with pytest.raises(Invalid, match="QLoRA needs a GPU pool"):
        finetune.start_job(
            actor=setup["engineer"],
            base_version=setup["base"],
            pool=setup["pool"],
            dataset_version=setup["dataset_version"],
            method=Method.QLORA,
        )


def test_a_speech_base_is_refused_before_any_job_exists(setup):
    setup["base"].family = "speech"
    setup["base"].save(update_fields=["family"])
    with pytest.raises(Invalid, match="is a speech model"):
        finetune.start_job(
            actor=setup["engineer"],
            base_version=setup["base"],
            pool=setup["pool"],
            dataset_version=setup["dataset_version"],
            method=Method.LORA,
        )
    assert not FineTuneJob.objects.exists()


def test_a_job_past_its_teams_hard_limited_budget_is_refused_with_the_reason(setup, org, team):
    from portfolio.billing import budgets
    from portfolio.errors import Conflict

    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="0", hard_limit=True)
    with pytest.raises(Conflict, match="hard limit"):
        _start(setup, epochs=1)
    assert not FineTuneJob.objects.exists()


def test_a_max_length_past_the_bases_context_is_refused_before_the_job_is_queued(setup):
    """Rows longer than the base's context index past its position embeddings (GPT-2, OPT): the job used
    to be queued, load the base on a node and end errored there."""
    from portfolio.registry.models import ModelVersion

    ModelVersion.objects.filter(pk=setup["base"].pk).update(context_length=64)
    setup["base"].refresh_from_db()
    with pytest.raises(Invalid, match="max_length: more than .*'s context, 64 tokens"):
        _start(setup, max_length=4096)
    assert not FineTuneJob.objects.exists()
    assert _start(setup, max_length=64, epochs=1).status == JobStatus.QUEUED


def test_a_job_queued_on_a_node_lost_before_it_started_is_failed_not_left_holding_its_claim(setup):
    """Only running jobs were reaped: one queued on a node that never came back stayed queued, its claim on
    the node's GPUs standing, until someone cancelled it."""
    from datetime import timedelta

    from portfolio.audit.models import AuditEvent
    from serving.choices import NodeState
    from serving.models import Node

    job = _start(setup, epochs=1)
    assert job_reaper.reap_stale_jobs(timedelta(minutes=2)) == 0  # its node is alive: it waits
    Node.objects.filter(pk=job.node_id).update(state=NodeState.LOST)
    assert job_reaper.reap_stale_jobs(timedelta(minutes=2)) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "was lost before the job started" in job.status_detail
    failed = AuditEvent.objects.get(action="training.job_failed")
    assert (failed.object_id, failed.actor_label) == (str(job.pk), "system:training")


def test_a_job_on_a_silent_node_is_resumed_elsewhere_or_failed_never_left_running(setup, settings):
    from datetime import timedelta

    job = _start(setup, epochs=1)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    job_reaper.reap_stale_jobs(timedelta(minutes=2))
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and "resuming from step" in job.status_detail
    from portfolio.audit.models import AuditEvent

    moved = AuditEvent.objects.get(action="training.job_requeued")
    assert (moved.object_id, moved.actor_label, moved.after["status"]) == (
        str(job.pk),
        "system:training",
        "queued",
    )
    settings.TRAINING_MAX_ATTEMPTS = 1
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    job_reaper.reap_stale_jobs(timedelta(minutes=2))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "giving up" in job.status_detail


def test_a_trained_version_is_not_registered_once_its_base_is_no_longer_shared(
    make_job, base, team, other_team, engineer
):
    """Another team's base, shared with the organisation when the job started, made private by its owners
    while the job trained: the job used to register its output anyway (a full fine-tune's is a copy of the
    base's weights), where a merge of an adapter is refused for the same reason."""
    from portfolio.errors import Conflict
    from portfolio.registry import services as registry
    from portfolio.registry.choices import Visibility
    from portfolio.registry.models import Model

    target = registry.create_model(actor=engineer, name="tuned-router", owner_team=team)
    Model.objects.filter(pk=base.model_id).update(owner_team=other_team, visibility=Visibility.ORGANISATION)
    job = make_job(status=JobStatus.RUNNING, attempt=1, target_model=target)
    Model.objects.filter(pk=base.model_id).update(visibility=Visibility.TEAM)
    with pytest.raises(Conflict, match="no longer shared with"):
        finetune.register_output(job, manifest=None, facts=None, store_uri="file:///x", metrics={})
    assert not ModelVersion.objects.filter(model=target).exists()

"""Merging an adapter into a full version: started from the adapter's page or the API (a hook the training
app registers), computed in a child process the control task starts and watches, registered with lineage in
one transaction with the job's end; a failure leaves nothing in the store (its billing: test_merge_billing.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import DatabaseError
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid
from portfolio.registry import lineage, merging
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.storage import store_directory, verify
from portfolio.registry.stores import default_store
from serving import engine_args
from serving import services as serving_services
from tests.conftest import actor_for
from training import tasks
from training.choices import JobStatus
from training.merges import services as merges
from training.models import MergeJob

pytestmark = pytest.mark.django_db


def merge_here(job_id: int) -> str | None:
    """The task's claim, then what its merge process (``training.merges.runner``) runs, in this process: the
    test's rows are in its transaction, which a child process could not see."""
    assert merges.claim(job_id) is not None
    return merges.compute(job_id)


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))


def test_an_engineer_merges_an_adapter_into_a_full_version_derived_from_it(versions, engineer):
    base, adapter = versions
    started = merging.request_merge(actor=engineer, version=adapter)
    job = MergeJob.objects.get(pk=started.id)
    assert (job.status, job.adapter_id) == (JobStatus.QUEUED, adapter.pk)
    assert actions()[-1] == "model_version.merge_start"
    assert merging.merge_notes(adapter) == [
        f"Merge #{job.pk} is queued: the merged version appears here when it is ready."
    ]

    assert merge_here(job.pk) == JobStatus.SUCCEEDED

    job.refresh_from_db()
    merged = job.output_version
    assert job.status == JobStatus.SUCCEEDED and job.finished_at is not None
    assert (merged.model, merged.number, merged.kind) == (adapter.model, 2, VersionKind.BASE)
    assert (merged.source, merged.parent_version, merged.base_version) == (Source.MERGE, adapter, None)
    assert merged.status == VersionStatus.READY
    assert merged.metrics["merged"] == {
        "adapter": adapter.label,
        "adapter_artifact": adapter.artifact_id,
        "base": base.label,
        "base_artifact": base.artifact_id,
    }
    files = {entry["path"] for entry in merged.artifact.files}
    assert "model.safetensors" in files and "tokenizer_config.json" in files
    assert "adapter_config.json" not in files
    assert merged.architecture == "LlamaForCausalLM"
    assert actions()[-1] == "model_version.merge"
    _, edges = lineage.graph_for(adapter.model, ModelVersion.objects.all())
    relations = {(e.source, e.target, e.relation) for e in edges}
    assert (f"v{merged.pk}", f"v{adapter.pk}", "merged from") in relations
    assert (f"v{adapter.pk}", f"v{base.pk}", "adapter of") in relations
    assert merging.merge_notes(adapter) == [
        f"Merged as {merged.label}, a full version; archive {merged.label} to merge this adapter again."
    ]


def test_only_a_ready_adapter_is_merged(versions, engineer):
    base, adapter = versions
    with pytest.raises(Invalid, match="not an adapter"):
        merging.request_merge(actor=engineer, version=base)
    registry.archive_version(actor=engineer, version=adapter)
    with pytest.raises(Conflict, match="only a ready adapter"):
        merging.request_merge(actor=engineer, version=adapter)
    assert not MergeJob.objects.exists()


def test_a_viewer_may_not_merge(versions, org):
    _, adapter = versions
    with pytest.raises(Forbidden):
        merging.request_merge(actor=actor_for(org["viewer"]), version=adapter)


def test_a_merge_past_its_teams_hard_limited_budget_is_refused_with_the_reason(versions, engineer, org):
    """A merge runs on a node whose cores are billed to the team, as a fine-tune's are: it used to start
    whatever the team's hard limit, where a fine-tune, a deployment or a scale-up is refused."""
    from portfolio.billing import budgets

    _, adapter = versions
    budgets.set_budget(
        actor=actor_for(org["admin"]), team=adapter.model.owner_team, amount="0", hard_limit=True
    )
    with pytest.raises(Conflict, match="hard limit"):
        merging.request_merge(actor=engineer, version=adapter)
    assert not MergeJob.objects.exists()


def test_a_second_merge_of_an_adapter_while_one_is_under_way_is_refused(versions, engineer):
    _, adapter = versions
    first = merging.request_merge(actor=engineer, version=adapter)
    with pytest.raises(Conflict, match=f"Merge #{first.id} of {adapter.label} is already queued"):
        merging.request_merge(actor=engineer, version=adapter)


def test_a_merge_no_worker_took_up_is_sent_again_then_failed_and_the_adapter_may_be_merged_again(
    versions, engineer, settings, monkeypatch
):
    """Its message lost, a queued merge stayed queued for good, and refused every later merge of its adapter
    (there is no cancel): after MERGE_QUEUED_AFTER_SECONDS it is sent again (found by review: it was failed,
    while it only waited behind long work that held every long worker), and failed after six times as long."""
    sent = []
    monkeypatch.setattr(merges, "enqueue", sent.append)
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert merges.reap_stale(timedelta(minutes=2)) == [] and sent == []  # just queued: left alone
    queued_after = timedelta(seconds=settings.MERGE_QUEUED_AFTER_SECONDS)
    MergeJob.objects.filter(pk=job_id).update(created_at=timezone.now() - queued_after - timedelta(seconds=1))
    assert merges.reap_stale(timedelta(minutes=2)) == [] and sent == [job_id]
    assert merges.reap_stale(timedelta(minutes=2)) == [] and sent == [job_id], "once per wait"
    assert MergeJob.objects.get(pk=job_id).status == JobStatus.QUEUED
    MergeJob.objects.filter(pk=job_id).update(
        created_at=timezone.now() - 6 * queued_after - timedelta(seconds=1)
    )
    assert merges.reap_stale(timedelta(minutes=2)) == [job_id]
    job = MergeJob.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED and "took it up in 12 h" in job.status_detail
    assert actions()[-1] == "model_version.merge_failed"
    assert merging.request_merge(actor=engineer, version=adapter).id != job_id


def test_a_merge_of_damaged_files_fails_with_the_reason_and_registers_nothing(versions, engineer, settings):
    base, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    for entry in adapter.artifact.files:  # the stored adapter weights, damaged
        if entry["path"].endswith(".safetensors"):
            blob = default_store().blob_path(entry["sha256"])
            blob.write_bytes(b"not the weights")
    count = ModelVersion.objects.count()

    assert merge_here(job_id) == JobStatus.FAILED

    job = MergeJob.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED and "CorruptArtifact" in job.status_detail
    assert ModelVersion.objects.count() == count
    assert actions()[-1] == "model_version.merge_failed"
    assert merging.merge_notes(adapter)[0].startswith(f"Merge #{job_id} failed: CorruptArtifact")


def test_a_merge_ended_by_the_reaper_while_it_ran_registers_nothing(versions, engineer, monkeypatch):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    from training.merges import weights

    real = weights.merge_directory

    def slow_worker_reaped_meanwhile(*args):
        real(*args)
        MergeJob.objects.filter(pk=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        assert merges.reap_stale(timedelta(minutes=2)) == [job_id]

    monkeypatch.setattr(weights, "merge_directory", slow_worker_reaped_meanwhile)
    count = ModelVersion.objects.count()

    assert merge_here(job_id) is None

    job = MergeJob.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED and "worker stopped" in job.status_detail
    assert ModelVersion.objects.count() == count
    assert job.output_version is None


def test_a_bug_in_the_merge_ends_the_job_errored_not_running(versions, engineer, monkeypatch):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    from training.merges import weights

    monkeypatch.setattr(weights, "merge_directory", lambda *args: 1 / 0)

    assert merge_here(job_id) == JobStatus.ERRORED

    job = MergeJob.objects.get(pk=job_id)
    assert job.status == JobStatus.ERRORED and "ZeroDivisionError" in job.status_detail
    assert actions()[-1] == "model_version.merge_failed"


def test_a_redelivered_merge_task_leaves_the_claimed_job_alone(versions, engineer):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    MergeJob.objects.filter(pk=job_id).update(status=JobStatus.RUNNING, heartbeat_at=timezone.now())

    assert tasks.merge_adapter(job_id) is None
    assert MergeJob.objects.get(pk=job_id).status == JobStatus.RUNNING
    assert tasks.reap_stale_merges() == 0  # it beats: alive


def test_a_deployment_of_the_merged_version_runs_without_lora(versions, engineer, org, cpu_pool, team):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    merge_here(job_id)
    merged = MergeJob.objects.get(pk=job_id).output_version
    deployment = serving_services.create_deployment(
        actor=actor_for(org["admin"]),
        name="router-merged",
        team=team,
        version=merged,
        pool=cpu_pool,
        replicas=0,
        args={"max_model_len": 128},
    )
    launch = engine_args.build(
        python="python",
        pool_kind=cpu_pool.kind,
        args=engine_args.validate(deployment.engine_args, cpu_pool.kind),
        model_dir=merged_dir_stand_in(),
        served_name=deployment.name,
        host="127.0.0.1",
        port=8000,
        adapters={a.name: merged_dir_stand_in() for a in deployment.adapters.all()},
        gpu_indices=[],
        api_key="k",
    )
    assert "--enable-lora" not in launch.argv
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in launch.env


def merged_dir_stand_in():
    from pathlib import Path

    return Path("/models/merged")


def test_the_api_starts_a_merge_and_follows_it(versions, client, org):
    _, adapter = versions
    client.force_login(org["engineer"])
    response = client.post(f"/api/v1/models/{adapter.model.name}/versions/{adapter.number}/merge")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and adapter.label in body["message"]
    merge_here(body["id"])
    followed = client.get(f"/api/v1/training/merges/{body['id']}").json()
    assert followed["status"] == "succeeded"
    assert followed["output_version"] == f"{adapter.model.name}:v2"
    client.force_login(org["outsider"])
    assert client.get(f"/api/v1/training/merges/{body['id']}").status_code == 404


def test_the_adapter_page_has_the_merge_button_and_says_how_it_went(versions, client, org):
    base, adapter = versions
    client.force_login(org["engineer"])
    page = client.get(f"/models/{adapter.model.name}/v{adapter.number}/").content.decode()
    assert f'action="/models/{adapter.model.name}/v{adapter.number}/merge/"' in page
    assert "/merge/" not in client.get(f"/models/{base.model.name}/v{base.number}/").content.decode()
    response = client.post(f"/models/{adapter.model.name}/v{adapter.number}/merge/", follow=True)
    assert f"Merging {adapter.label} into {base.label}" in response.content.decode()
    response = client.post(f"/models/{adapter.model.name}/v{adapter.number}/merge/", follow=True)
    assert "is already queued" in response.content.decode()


def _stored(digest: str) -> bool:
    return default_store().has_blob(digest)


def test_a_merge_whose_registration_fails_leaves_no_weights_in_the_store(versions, engineer, monkeypatch):
    base, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    real = merging.register_merged_version
    seen = {}

    def registered_then_the_transaction_fails(**kwargs):
        real(**kwargs)
        seen["manifest"] = kwargs["manifest"]
        raise DatabaseError("could not serialize access due to concurrent update")

    monkeypatch.setattr(merging, "register_merged_version", registered_then_the_transaction_fails)
    count = ModelVersion.objects.count()

    assert merge_here(job_id) == JobStatus.ERRORED

    job = MergeJob.objects.get(pk=job_id)
    assert "DatabaseError" in job.status_detail
    assert ModelVersion.objects.count() == count
    manifest = seen["manifest"]
    shared = {entry["sha256"] for entry in base.artifact.files + adapter.artifact.files}
    written = [entry.sha256 for entry in manifest.files if entry.sha256 not in shared]
    assert any(entry.path == "model.safetensors" and entry.sha256 in written for entry in manifest.files)
    assert not [digest for digest in written if _stored(digest)]  # the merged weights are gone
    assert not (default_store().root / "manifests" / f"{manifest.artifact_id}.json").exists()
    # What the merged version shared with its base (the tokenizer file) is the base's: kept.
    assert any(entry.sha256 in shared for entry in manifest.files)
    assert verify(default_store(), base.artifact.manifest()) == []
    assert job.upload == {}


def test_a_merge_process_that_died_after_writing_weights_leaves_none_but_what_others_use(
    versions, engineer, tmp_path
):
    base, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert merges.claim(job_id) is not None
    half = tmp_path / "half-written"
    half.mkdir()
    (half / "model-00001-of-00002.safetensors").write_bytes(b"the first shard of a merged model")
    store_directory(default_store(), half, before_write=lambda written: merges._note_upload(job_id, written))
    upload = MergeJob.objects.get(pk=job_id).upload
    (written,) = upload["blobs"]
    assert _stored(written)
    # A blob the process noted just before a recorded artifact (the base) stored the same bytes: kept.
    shared = base.artifact.files[0]["sha256"]
    MergeJob.objects.filter(pk=job_id).update(upload={**upload, "blobs": [written, shared]})

    status = merges.ended(
        job_id, 3.0, "The merge process exited (signal 9) without finishing the job.", "loading"
    )

    job = MergeJob.objects.get(pk=job_id)
    assert status == job.status == JobStatus.FAILED
    assert job.status_detail.splitlines() == [
        "loading",
        "The merge process exited (signal 9) without finishing the job.",
    ]
    assert merging.merge_notes(adapter) == [
        f"Merge #{job_id} failed: The merge process exited (signal 9) without finishing the job."
    ]
    assert actions()[-1] == "model_version.merge_failed"
    assert not _stored(written) and _stored(shared)
    assert job.compute_seconds == 3.0 and job.cpu_core_seconds >= 3.0


def _process(tmp_path, code: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "merge.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, log


def test_the_watcher_fails_a_merge_whose_process_exits_without_ending_it(versions, engineer, tmp_path):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert merges.claim(job_id) is not None
    process, log = _process(tmp_path, "import sys; print('out of memory?', flush=True); sys.exit(3)")

    assert tasks._watch_merge(job_id, process, log) == JobStatus.FAILED

    job = MergeJob.objects.get(pk=job_id)
    assert job.status_detail.splitlines() == [
        "out of memory?",
        "The merge process exited (code 3) without finishing the job.",
    ]
    assert job.finished_at is not None and job.compute_seconds > 0


def test_the_watcher_stops_a_merge_process_past_its_time_and_fails_the_job(
    versions, engineer, tmp_path, settings
):
    _, adapter = versions
    settings.MERGE_TIMEOUT_SECONDS = 1
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert merges.claim(job_id) is not None
    process, log = _process(tmp_path, "import time; time.sleep(120)")
    began = time.monotonic()

    assert tasks._watch_merge(job_id, process, log) == JobStatus.FAILED

    assert time.monotonic() - began < 30 and process.returncode == -signal.SIGTERM
    job = MergeJob.objects.get(pk=job_id)
    assert job.status_detail.endswith("ran past 1s (PORTFOLIO_MERGE_TIMEOUT_SECONDS) and was stopped.")


def test_a_watcher_whose_beat_fails_stops_the_merge_process_rather_than_leave_it_unwatched(
    versions, engineer, tmp_path, settings, monkeypatch
):
    """Its beat raised (the database gone a moment) and the task ended: the process ran on with nobody to
    hold it to its time limit. It is stopped; the job, no longer beaten, is left to the reaper."""
    _, adapter = versions
    settings.TRAINING_HEARTBEAT_SECONDS = 0
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert merges.claim(job_id) is not None
    process, log = _process(tmp_path, "import time; time.sleep(120)")

    def beat_fails(job_id):
        raise DatabaseError("the database went away")

    monkeypatch.setattr(merges, "beat", beat_fails)
    with pytest.raises(DatabaseError):
        tasks._watch_merge(job_id, process, log)

    assert process.poll() == -signal.SIGTERM
    assert MergeJob.objects.get(pk=job_id).status == JobStatus.RUNNING


@pytest.mark.django_db(transaction=True)
def test_the_merge_task_merges_in_a_child_process_not_in_the_control_worker(versions, engineer, monkeypatch):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    from training.merges import weights

    # Were the weights merged in this process, this would fail the job.
    monkeypatch.setattr(weights, "merge_directory", lambda *args: 1 / 0)

    assert tasks.merge_adapter(job_id) == JobStatus.SUCCEEDED, MergeJob.objects.get(pk=job_id).status_detail

    job = MergeJob.objects.get(pk=job_id)
    assert job.output_version.source == Source.MERGE and job.compute_seconds > 0
    log = tasks._merge_log_path(job_id).read_text()
    assert f"merging {adapter.label} into" in log and f"registered {job.output_version.label}" in log

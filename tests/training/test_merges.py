"""Merging an adapter into a full version: started from the adapter's page or the API (a hook the training
app registers), run by a control task, registered with lineage in one transaction with the job's end."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid
from portfolio.registry import lineage, merging
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.stores import default_store
from portfolio.registry.tasks import import_version
from serving import engine_args
from serving import services as serving_services
from tests.conftest import actor_for
from tests.training.tiny_lora import make_adapter, make_base
from training import tasks
from training.choices import JobStatus
from training.merges import services as merges
from training.models import MergeJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(settings, tmp_path, engineer, team):
    """A tiny base and a random LoRA adapter on it, imported from a server folder as people import them."""
    root = (tmp_path / "imports").resolve()
    settings.IMPORT_ROOTS = [root]
    base_dir = make_base(root / "base")
    adapter_dir = make_adapter(base_dir, root / "adapter")
    base_model = registry.create_model(actor=engineer, name="tiny-base", owner_team=team)
    base = registry.start_import(
        actor=engineer, model=base_model, source=Source.LOCAL, ref=str(base_dir), enqueue=False
    )
    import_version(base.pk)
    base.refresh_from_db()
    router = registry.create_model(actor=engineer, name="tiny-router", owner_team=team)
    adapter = registry.start_import(
        actor=engineer,
        model=router,
        source=Source.LOCAL,
        ref=str(adapter_dir),
        base_version=base,
        enqueue=False,
    )
    import_version(adapter.pk)
    adapter.refresh_from_db()
    assert (base.status, adapter.status, adapter.kind) == ("ready", "ready", VersionKind.ADAPTER)
    return base, adapter


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

    assert tasks.merge_adapter(job.pk) == JobStatus.SUCCEEDED

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
    assert merging.merge_notes(adapter) == []


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


def test_a_second_merge_of_an_adapter_while_one_is_under_way_is_refused(versions, engineer):
    _, adapter = versions
    first = merging.request_merge(actor=engineer, version=adapter)
    with pytest.raises(Conflict, match=f"Merge #{first.id} of {adapter.label} is already queued"):
        merging.request_merge(actor=engineer, version=adapter)


def test_a_merge_of_damaged_files_fails_with_the_reason_and_registers_nothing(versions, engineer, settings):
    base, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    for entry in adapter.artifact.files:  # the stored adapter weights, damaged
        if entry["path"].endswith(".safetensors"):
            blob = default_store().blob_path(entry["sha256"])
            blob.write_bytes(b"not the weights")
    count = ModelVersion.objects.count()

    assert tasks.merge_adapter(job_id) == JobStatus.FAILED

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

    assert tasks.merge_adapter(job_id) is None

    job = MergeJob.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED and "worker stopped" in job.status_detail
    assert ModelVersion.objects.count() == count
    assert job.output_version is None


def test_a_bug_in_the_merge_ends_the_job_errored_not_running(versions, engineer, monkeypatch):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    from training.merges import weights

    monkeypatch.setattr(weights, "merge_directory", lambda *args: 1 / 0)

    assert tasks.merge_adapter(job_id) == JobStatus.ERRORED

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
    tasks.merge_adapter(job_id)
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
    tasks.merge_adapter(body["id"])
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

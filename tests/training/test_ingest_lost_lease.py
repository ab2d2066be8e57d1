"""A run that lost its lease and then fails (the run that replaced it removed its work folder) leaves the job
and its upload to the live run; an ingest checks its lease while it stores its files (real Redis).

The import worker follows the same rule, tested here beside the ingest's."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from portfolio.errors import Invalid
from portfolio.leases import LeaseLost
from portfolio.registry import importers, importing
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.storage import store_directory
from portfolio.registry.tasks import import_version
from tests.conftest import actor_for
from tests.registry.conftest import import_here, imports, make_adapter_folder, make_model_folder  # noqa: F401
from tests.test_leases_lapsed import lapse_while_another_runs
from tests.training.conftest import jsonl, tickets
from training import ingest, services, tasks
from training.choices import JobStatus
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "failure", [FileNotFoundError("its work folder is gone"), Invalid("file: a refusal")], ids=repr
)
def test_an_ingest_that_fails_after_losing_its_lease_leaves_the_ingest_and_upload_to_its_replacement(
    settings, engineer, chat_set, monkeypatch, failure
):
    settings.TASK_LEASE_SECONDS = 1
    pending = services.upload_version(
        actor=engineer, dataset=chat_set, chunks=[jsonl(*tickets(40))], filename="rows.jsonl", enqueue=False
    )

    def replaced_while_storing(store, folder, *args, **kwargs):
        # The lease lapsed (Redis lost it) and the reaper's resend took over: its ``prepare`` removes this
        # run's work folder, and this run's storing fails.
        lapse_while_another_runs(ingest.lease_of(pending.pk).key)
        ingest.remove_work(pending.pk)
        raise failure

    monkeypatch.setattr(ingest, "store_directory", replaced_while_storing)
    tasks.ingest_dataset(pending.pk)

    pending.refresh_from_db()
    assert pending.status == JobStatus.RUNNING, pending.status_detail  # the live run's to end
    assert Path(pending.upload_path).exists()  # the live run reads it
    assert not DatasetVersion.objects.exists()


def test_an_ingest_checks_its_lease_while_storing_and_stops_before_writing_a_file(
    settings, engineer, chat_set, monkeypatch
):
    settings.TASK_LEASE_SECONDS = 1
    pending = services.upload_version(
        actor=engineer, dataset=chat_set, chunks=[jsonl(*tickets(40))], filename="rows.jsonl", enqueue=False
    )
    written, stopped = [], []

    def paused_then_storing(store, folder, *args, **kwargs):
        lapse_while_another_runs(ingest.lease_of(pending.pk).key)
        monkeypatch.setattr(store, "put_blob", lambda *blob: written.append(blob))
        try:
            return store_directory(store, folder, *args, **kwargs)
        except LeaseLost:
            stopped.append(folder)
            raise

    monkeypatch.setattr(ingest, "store_directory", paused_then_storing)
    tasks.ingest_dataset(pending.pk)

    assert stopped and written == []
    pending.refresh_from_db()
    assert pending.status == JobStatus.RUNNING and Path(pending.upload_path).exists()


@pytest.mark.usefixtures("imports")
@pytest.mark.parametrize(
    "failure", [importers.ImportFailed("a refusal"), FileNotFoundError("its work folder is gone")], ids=repr
)
def test_an_import_that_fails_after_losing_its_lease_leaves_the_version_and_its_upload_alone(
    settings, org, team, tmp_path, monkeypatch, failure
):
    engineer = actor_for(org["engineer"])
    model = registry.create_model(actor=engineer, name="router", owner_team=team)
    base = import_here(engineer, model, Source.LOCAL, str(make_model_folder(settings.IMPORT_ROOTS[0] / "b")))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in make_adapter_folder(tmp_path / "adapter").iterdir():
            archive.write(path, f"my-adapter/{path.name}")
    saved = registry.save_upload(iter([buffer.getvalue()]), "adapter.zip")
    version = registry.start_import(
        actor=engineer,
        model=model,
        source=Source.UPLOAD,
        ref="adapter.zip",
        base_version=base,
        upload_path=saved,
        enqueue=False,
    )
    settings.TASK_LEASE_SECONDS = 1

    def replaced_then_failing(job, *args, **kwargs):
        lapse_while_another_runs(importing.lease_of(job.pk).key)
        raise failure

    monkeypatch.setattr(importers, "fetch", replaced_then_failing)
    import_version(version.pk)

    version.refresh_from_db()
    assert version.status == VersionStatus.IMPORTING, version.status_detail
    assert Path(saved).exists()

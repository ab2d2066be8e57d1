"""An import whose lease lapsed while another run took it stops before it writes: the version, and the
uploaded archive the live run reads, are no longer its own (real Redis)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from portfolio.registry import importers, importing, services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.tasks import import_version
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_adapter_folder, make_model_folder
from tests.test_leases_lapsed import lapse_while_another_runs

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


def test_an_import_whose_lease_lapsed_stops_without_ending_it_or_deleting_its_upload(
    settings, org, team, tmp_path, monkeypatch
):
    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="router", owner_team=team)
    base = import_here(engineer, model, Source.LOCAL, str(make_model_folder(settings.IMPORT_ROOTS[0] / "b")))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in make_adapter_folder(tmp_path / "adapter").iterdir():
            archive.write(path, f"my-adapter/{path.name}")
    saved = services.save_upload(iter([buffer.getvalue()]), "adapter.zip")
    version = services.start_import(
        actor=engineer,
        model=model,
        source=Source.UPLOAD,
        ref="adapter.zip",
        base_version=base,
        upload_path=saved,
        enqueue=False,
    )
    settings.TASK_LEASE_SECONDS = 1
    fetch = importers.fetch

    def paused_then_fetch(job, *args, **kwargs):
        lapse_while_another_runs(importing.lease_of(job.pk).key)
        return fetch(job, *args, **kwargs)

    monkeypatch.setattr(importers, "fetch", paused_then_fetch)
    import_version(version.pk)

    version.refresh_from_db()
    assert version.status == VersionStatus.IMPORTING, version.status_detail
    assert Path(saved).exists()

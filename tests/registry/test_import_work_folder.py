"""An import's work folder (``DATA_DIR/work/import-<version>-*``: the fetched files) does not outlive its run:
what a run killed outright (its worker's SIGKILL, the OOM killer) left is removed when the reaper fails the
import, or by the run that takes it up again, and nothing of another import."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from portfolio.registry import importing, services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.tasks import import_version, reap_stale_imports
from tests.conftest import actor_for
from tests.registry.conftest import make_model_folder

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


def _killed_run(org, model, settings) -> tuple[ModelVersion, list[Path]]:
    """An import whose run started, wrote its fetched files and died; and other imports' and merges' work
    folders (one whose id starts with this one's), which are left alone."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    version = services.start_import(
        actor=actor_for(org["engineer"]), model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    importing.report_progress(version.pk, 10, "fetching")
    work = settings.DATA_DIR / "work"
    left = work / f"import-{version.pk}-abc"
    left.mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"fetched weights")
    others = [
        work / f"import-{version.pk + 1}-x",
        work / f"import-{version.pk}0-x",
        work / f"merge-{version.pk}-x",
    ]
    for other in others:
        other.mkdir()
    return version, others


def test_the_work_folder_a_dead_run_left_is_removed_when_its_import_is_reaped(org, model, settings, sent):
    version, others = _killed_run(org, model, settings)
    ModelVersion.objects.filter(pk=version.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))

    assert reap_stale_imports() == 1

    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert sorted((settings.DATA_DIR / "work").iterdir()) == sorted(others)


def test_the_run_that_takes_an_import_up_again_removes_what_the_killed_one_left(org, model, settings):
    """A redelivery after its worker died: the import is made, and the reaper, which never sees it silent,
    is not there to remove the dead run's folder."""
    version, others = _killed_run(org, model, settings)

    import_version(version.pk)

    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_detail
    assert sorted((settings.DATA_DIR / "work").iterdir()) == sorted(others)

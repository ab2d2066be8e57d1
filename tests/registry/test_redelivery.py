"""An upload import whose task the broker hands to the worker a second time while the first run still imports
(Redis's visibility timeout, here two seconds): the second delivery leaves it alone, the import ends ready."""

from __future__ import annotations

import time
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from portfolio.audit.models import AuditEvent
from portfolio.envparse import database_url
from portfolio.registry import services
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.tasks import import_version
from tests.celery_worker import VISIBILITY_TIMEOUT, deliveries, start_worker, stop_worker, wait_for
from tests.conftest import actor_for
from tests.registry.conftest import make_adapter_folder, make_model_folder

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("imports")]


def importing_runs(version_id: int) -> int:
    """Runs of this import waiting to write its progress (the test holds the version's row)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            " AND query LIKE 'UPDATE \"registry_modelversion\"%%' AND query LIKE %s",
            [f'%"registry_modelversion"."id" = {version_id}%'],
        )
        return cursor.fetchone()[0]


def test_a_redelivered_import_leaves_the_running_one_alone_and_the_upload_ends_ready(org, team, tmp_path):
    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="ticket-router", owner_team=team)
    base = services.start_import(
        actor=engineer,
        model=model,
        source=Source.LOCAL,
        enqueue=False,
        ref=str(make_model_folder(tmp_path / "imports" / "base")),
    )
    import_version(base.pk)
    adapter = make_adapter_folder(tmp_path / "adapter")
    archive = tmp_path / "adapter.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in adapter.iterdir():
            zipped.write(path, f"my-adapter/{path.name}")
    saved = services.save_upload([archive.read_bytes()], archive.name)
    version = services.start_import(
        actor=engineer,
        model=model,
        source=Source.UPLOAD,
        ref=archive.name,
        base_version=base,
        upload_path=saved,
        enqueue=False,
    )
    queue = f"control-redelivery-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    # The test holds the version's row: the import's first progress report waits, the run goes on past the
    # visibility timeout.
    holder = psycopg.connect(database_url(connection.settings_dict))
    holder.execute("SELECT 1 FROM registry_modelversion WHERE id = %s FOR UPDATE", [version.pk])
    worker = start_worker(queue, log)
    try:
        import_version.apply_async(args=[version.pk], queue=queue)
        wait_for("the import to wait on the row", lambda: importing_runs(version.pk) == 1, log)
        wait_for(
            "a second delivery",
            lambda: deliveries(log, "registry.import_version") >= 2,
            log,
            timeout=VISIBILITY_TIMEOUT + 60,
        )
        time.sleep(4)  # past the lease's expiry: a second run would be waiting on the row by now
        assert importing_runs(version.pk) == 1, log.read_text()[-4000:]
        holder.rollback()
        version = wait_for(
            "the import to end",
            lambda: (
                ModelVersion.objects.exclude(status=VersionStatus.IMPORTING).filter(pk=version.pk).first()
            ),
            log,
        )
    finally:
        holder.close()
        stop_worker(worker)
    assert version.status == VersionStatus.READY, version.status_detail
    assert version.kind == VersionKind.ADAPTER
    events = AuditEvent.objects.filter(object_type="registry.modelversion", object_id=str(version.pk))
    assert list(events.order_by("sequence").values_list("action", flat=True)) == [
        "model_version.import",
        "model_version.ready",
    ]
    assert not Path(saved).exists()
    assert f"import of version {version.pk} is run by a live delivery" in log.read_text()

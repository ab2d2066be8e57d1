"""Registry work on the control queue: imports (with progress), artifact verification, the reaper."""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from celery import shared_task
from django.conf import settings

from portfolio.errors import DomainError
from portfolio.leases import Lease
from portfolio.registry import importers, services
from portfolio.registry.choices import VersionStatus
from portfolio.registry.inspection import InspectionError, inspect_directory
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.storage import CorruptArtifact, store_directory, verify
from portfolio.registry.stores import default_store

logger = logging.getLogger(__name__)
STALE_IMPORT_AFTER = timedelta(minutes=15)


class _Reporter:
    """Progress into the version row, at most twice a second (it doubles as the import's heartbeat)."""

    def __init__(self, version_id: int):
        self.version_id = version_id
        self.last = 0.0
        self.percent = 0

    def __call__(self, percent: int, detail: str) -> None:
        self.percent = percent
        now = time.monotonic()
        if now - self.last >= 0.5 or percent >= 100:
            self.last = now
            services.report_progress(self.version_id, percent, detail)


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@shared_task(name="registry.import_version", acks_late=True)
def import_version(version_id: int) -> None:
    version = ModelVersion.objects.filter(pk=version_id).select_related("model").first()
    if version is None or version.status != VersionStatus.IMPORTING:
        return  # idempotent: already finished, failed or archived
    # One run per import: a redelivery of this task (the broker's visibility timeout, a worker process that
    # died) finds the live run's lease and leaves the version, and its uploaded archive, alone.
    lease = Lease(f"registry.import_version:{version_id}")
    if not lease.acquire():
        logger.info(
            "import of version %s is run by a live delivery (%s); this redelivery leaves it alone",
            version_id,
            lease.holder(),
        )
        return
    with lease.kept():
        version.refresh_from_db(fields=["status"])
        if version.status == VersionStatus.IMPORTING:
            _import(version)


def _import(version: ModelVersion) -> None:
    version_id = version.pk
    report = _Reporter(version_id)
    work_root = Path(settings.DATA_DIR) / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=work_root, prefix=f"import-{version_id}-") as workdir:
            folder = importers.fetch(version, Path(workdir), report)
            total = _folder_size(folder)
            if total > settings.MAX_IMPORT_BYTES:
                raise importers.ImportFailed(
                    f"{total} bytes exceeds the import limit of {settings.MAX_IMPORT_BYTES}."
                )
            facts = inspect_directory(folder)
            problem = services._facts_problems(version, facts)
            if problem:
                raise importers.ImportFailed(problem)
            stored, base = 0, max(report.percent, 10)

            def on_bytes(n: int) -> None:
                nonlocal stored
                stored += n
                percent = base + int((99 - base) * stored / max(total, 1))
                report(percent, f"storing {stored // 2**20} / {total // 2**20} MiB")

            store = default_store()
            manifest = store_directory(store, folder, on_bytes)
            services.complete_import(version_id, manifest, facts, store.uri(manifest.artifact_id))
    except (importers.ImportFailed, InspectionError, DomainError, ValueError) as exc:
        services.fail_import(version_id, str(getattr(exc, "message", exc)))
    except Exception as exc:
        logger.exception("import of version %s failed", version_id)
        services.fail_import(
            version_id, f"Internal error during import ({exc.__class__.__name__}); see the worker log."
        )
        raise
    finally:
        upload = version.import_options.get("upload_path")
        if upload:
            Path(upload).unlink(missing_ok=True)


@shared_task(name="registry.verify_artifact")
def verify_artifact(artifact_id: str) -> list[str]:
    artifact = Artifact.objects.get(pk=artifact_id)
    problems = [str(p) for p in verify(default_store(), artifact.manifest())]
    services.mark_artifact_health(artifact_id, problems)
    return problems


@shared_task(name="registry.reap_stale_imports")
def reap_stale_imports() -> int:
    return services.reap_stale_imports(STALE_IMPORT_AFTER)


def materialize_version(version: ModelVersion) -> Path:
    """A verified local copy of a version's files (engines and trainers load from it)."""
    from portfolio.registry.storage import materialize

    artifact = version.artifact
    if artifact is None:
        raise CorruptArtifact(version.label, "has no stored artifact")
    try:
        return materialize(default_store(), artifact.manifest(), Path(settings.ARTIFACT_CACHE) / artifact.id)
    except CorruptArtifact as exc:
        services.mark_artifact_health(artifact.id, [str(exc)])
        raise

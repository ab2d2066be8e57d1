"""Registry work on the control queue: imports (with progress), artifact verification, the reaper, the
sweep of what dead registrations wrote, and billing's storage meter."""

from __future__ import annotations

from celery import shared_task

from portfolio.registry import artifacts, importing, pending_writes, storage_meter


@shared_task(name="registry.import_version", acks_late=True)
def import_version(version_id: int) -> None:
    importing.run(version_id)


@shared_task(name="registry.verify_artifact")
def verify_artifact(artifact_id: str) -> list[str]:
    return artifacts.verify_artifact(artifact_id)


@shared_task(name="registry.reap_stale_imports")
def reap_stale_imports() -> int:
    return importing.reap_stale_imports(importing.STALE_IMPORT_AFTER)


@shared_task(name="registry.sweep_pending_writes")
def sweep_pending_writes() -> int:
    from portfolio.registry.storage import LocalStore
    from portfolio.registry.stores import default_store

    store = default_store()
    if isinstance(store, LocalStore):  # S3 writes nothing partial: an unfinished upload is no object
        store.remove_abandoned_writes()
    return pending_writes.sweep()


@shared_task(name="registry.meter_storage")
def meter_storage() -> int:
    # Today's bytes per team (UTC day); rerun during the day, the last run's figure is the day's.
    return storage_meter.record()

"""The import worker: an import's whole life once it is queued, in one place.

``start_import`` (registry/services.py, the user side) registers a version ``importing`` with the progress
line "queued" and enqueues ``registry.import_version``, which runs ``run`` here. The status stays
``importing`` while the worker runs (its progress line says how far it got, and doubles as its heartbeat);
it ends in one of two ways:

- ``ready``: ``complete_import``, the files stored and checked, audited ``model_version.ready``;
- ``failed``: ``fail_import``, a refusal or an error with its reason, audited ``model_version.failed``
  (``reap_stale_imports`` fails an import whose worker died, and one that no worker took up in a day).

Silence alone does not mean death: a run holds its lease while it lives, and a GGUF conversion or a Hub
download says nothing for as long as it takes. A silent import still queued (the control workers busy with
long tasks, or its message lost) is sent again.

Every transition is a compare-and-swap on ``status == importing``: a version finished, failed or archived
meanwhile is left alone.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import DomainError
from portfolio.leases import Lease, LeaseLost, kept_here, still_held
from portfolio.registry import artifacts, blobclaims, cards, importers, safety
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.hashing import Manifest
from portfolio.registry.inspection import InspectionError, ModelFacts, inspect_directory
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.pending_writes import PendingWrites
from portfolio.registry.storage import store_directory
from portfolio.registry.stores import default_store

logger = logging.getLogger(__name__)
STALE_IMPORT_AFTER = timedelta(minutes=15)
# A queued import no worker took up in this long is failed rather than sent again once more.
GIVE_UP_QUEUED_AFTER = timedelta(hours=24)
# The progress line of an import no run has started yet (``start_import`` writes it; ``run`` replaces it).
QUEUED = "queued"
# The import's last progress line when the files have no chat template: what it means, where it shows.
NO_CHAT_TEMPLATE = (
    "ready, without a chat template: chat calls are refused (completions work) until a version "
    "with one is made"
)


# --- Running ---------------------------------------------------------------------------------------
def run(version_id: int) -> None:
    """Import a queued version's files; a rerun (redelivery) of a finished or live import does nothing."""
    version = ModelVersion.objects.filter(pk=version_id).select_related("model").first()
    if version is None or version.status != VersionStatus.IMPORTING:
        return  # idempotent: already finished, failed or archived
    # One run per import: a redelivery of this task (the broker's visibility timeout, a worker process that
    # died) finds the live run's lease and leaves the version, and its uploaded archive, alone.
    lease = lease_of(version_id)
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
            # No longer queued: from here the reaper tells a live run from a dead one by the lease.
            report_progress(version_id, 0, "starting")
            _import(version)


def lease_of(version_id: int) -> Lease:
    """The lease its run holds: a redelivery, or the reaper, finds a live run by it and leaves it alone."""
    return Lease(f"registry.import_version:{version_id}")


class Reporter:
    """Progress into the version row, at most twice a second (it doubles as the import's heartbeat). Each
    report first checks the run's lease: a run that lost it stops (``LeaseLost``) before writing anything."""

    def __init__(self, version_id: int, lease: Lease | None = None):
        self.version_id = version_id
        self.lease = lease
        self.last = 0.0
        self.percent = 0

    def ensure_held(self) -> None:
        if self.lease is not None:
            self.lease.ensure_held()

    def __call__(self, percent: int, detail: str) -> None:
        self.ensure_held()
        self.percent = percent
        now = time.monotonic()
        if now - self.last >= 0.5 or percent >= 100:
            self.last = now
            report_progress(self.version_id, percent, detail)


def report_progress(version_id: int, percent: int, detail: str) -> None:
    ModelVersion.objects.filter(pk=version_id, status=VersionStatus.IMPORTING).update(
        progress=max(0, min(100, percent)), progress_detail=detail[:200], heartbeat_at=timezone.now()
    )


def _folder_size(folder: Path) -> tuple[int, int]:
    """The bytes and the number of the files under ``folder``."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def _work_prefix(version_id: int) -> str:
    return f"import-{version_id}-"


def remove_work(version_id: int) -> None:
    """The import's work folders (the fetched files, up to ``MAX_IMPORT_BYTES``): a run removes its own as
    it ends, but one killed outright (its worker's SIGKILL, the OOM killer) leaves them behind."""
    for folder in (Path(settings.DATA_DIR) / "work").glob(f"{_work_prefix(version_id)}*"):
        shutil.rmtree(folder, ignore_errors=True)


def _import(version: ModelVersion) -> None:
    version_id = version.pk
    report = Reporter(version_id, kept_here())  # the lease ``run`` keeps; None when called outside it
    lost = False
    remove_work(version_id)  # what a killed run left; the lease lets no other run be live
    work_root = Path(settings.DATA_DIR) / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=work_root, prefix=_work_prefix(version_id)) as workdir:
            folder = importers.fetch(version, Path(workdir), report)
            total, count = _folder_size(folder)
            if total > settings.MAX_IMPORT_BYTES:
                raise importers.ImportFailed(
                    f"{total} bytes exceeds the import limit of {settings.MAX_IMPORT_BYTES}."
                )
            if count > safety.MAX_IMPORT_FILES:
                raise importers.ImportFailed(
                    f"{count} files: a version holds at most {safety.MAX_IMPORT_FILES:,} (each is hashed, stored "
                    "and listed on its page)."
                )
            facts = inspect_directory(folder)
            problem = facts_problems(version, facts)
            if problem:
                raise importers.ImportFailed(problem)
            stored, base = 0, max(report.percent, 10)

            def on_bytes(n: int) -> None:
                nonlocal stored
                stored += n
                percent = base + int((99 - base) * stored / max(total, 1))
                report(percent, f"storing {stored // 2**20} / {total // 2**20} MiB")

            store = default_store()
            log = PendingWrites(f"the import of version {version_id}")  # a killed run's: the sweep's
            try:
                with blobclaims.registering():  # what it finds stored stays there until it is recorded
                    manifest = store_directory(
                        store, folder, on_bytes, before_write=log, rewrite=artifacts.damaged_blobs()
                    )
                    report.ensure_held()  # the files took a while to store: still this run's to complete?
                    done = complete_import(version_id, manifest, facts, store.uri(manifest.artifact_id))
            except BaseException:
                log.discard(store)
                raise
            if done is None:  # failed (the reaper, a cancel) while its files were stored: none kept
                log.discard(store)
            else:
                log.recorded()
                artifacts.verify_if_damaged(manifest.artifact_id)  # the same files, found damaged before
    except LeaseLost:
        # Another run may hold the import now (a redelivery): its outcome and its uploaded archive are that
        # run's, or the reaper's once nobody reports.
        lost = True
        logger.warning(
            "import of version %s lost its lease: this run stops, leaving the version alone", version_id
        )
    except Exception as exc:
        # A run that lost its lease may fail because of the run that replaced it: the outcome, and the
        # uploaded archive, are not this run's.
        if not still_held(report.lease):
            lost = True
            logger.warning(
                "import of version %s failed after losing its lease: left alone", version_id, exc_info=True
            )
        elif isinstance(exc, (importers.ImportFailed, InspectionError, DomainError, ValueError)):
            fail_import(version_id, str(getattr(exc, "message", exc)))
        else:
            logger.exception("import of version %s failed", version_id)
            fail_import(
                version_id, f"Internal error during import ({exc.__class__.__name__}); see the worker log."
            )
            raise
    finally:
        upload = version.import_options.get("upload_path")
        if upload and not lost:
            Path(upload).unlink(missing_ok=True)


def facts_problems(version: ModelVersion, facts: ModelFacts) -> str | None:
    """Why these files cannot be ``version`` (checked before they are stored, and again on completion)."""
    options = version.import_options
    if facts.pickle_files and not options.get("allow_pickle"):
        return (
            f"Pickle weights refused ({', '.join(facts.pickle_files[:3])}): they can run code when loaded. "
            "Use safetensors, or an admin may allow pickle for this import."
        )
    if facts.needs_remote_code and not options.get("trust_remote_code"):
        return (
            "This model needs custom code (trust_remote_code): refused unless a platform admin approves it "
            "for this import."
        )
    if version.kind == VersionKind.ADAPTER and not facts.is_adapter:
        return "An adapter needs adapter_config.json and adapter weights as safetensors."
    if version.kind == VersionKind.BASE and facts.is_adapter:
        return "These files are an adapter: import them as an adapter of a base version."
    if not facts.parameter_count:
        return "No safetensors weights found."
    return None


# --- Ending ----------------------------------------------------------------------------------------
@transaction.atomic
def complete_import(
    version_id: int, manifest: Manifest, facts: ModelFacts, store_uri: str
) -> ModelVersion | None:
    version = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model__owner_team")
        .get(pk=version_id)
    )
    if version.status != VersionStatus.IMPORTING:
        return None  # cancelled or finished by another run meanwhile
    problem = facts_problems(version, facts)
    if problem:
        _fail(version, problem)
        return None
    artifact = Artifact.objects.record(manifest, store_uri)
    version.artifact = artifact
    version.format = facts.format
    version.architecture = facts.architecture
    version.parameter_count = facts.parameter_count
    version.context_length = facts.context_length
    version.dtype = facts.dtype
    version.quantization = facts.quantization
    # vLLM renders an adapter's chats with its base's tokenizer: the base's template is the adapter's.
    base = version.base_version
    version.has_chat_template = base.has_chat_template if base is not None else facts.has_chat_template
    version.shape = facts.shape
    # An adapter is served on its base: its family and architecture are the base's.
    version.family = base.family if base is not None else facts.family
    version.architecture_facts = base.architecture_facts if base is not None else facts.architecture_facts
    if facts.adapter:
        version.metrics = {**version.metrics, "adapter": facts.adapter}
    if not version.model_card:
        version.model_card = facts.model_card or cards.generated_card(version)
    version.status, version.progress, version.progress_detail = VersionStatus.READY, 100, "ready"
    if not version.has_chat_template:
        version.progress_detail = NO_CHAT_TEMPLATE
        logger.warning("%s imported without a chat template: chat calls to it will be refused", version.label)
    version.ready_at = timezone.now()
    version.save(
        update_fields=[
            "artifact",
            "format",
            "architecture",
            "parameter_count",
            "context_length",
            "dtype",
            "quantization",
            "has_chat_template",
            "shape",
            "family",
            "architecture_facts",
            "metrics",
            "model_card",
            "status",
            "progress",
            "progress_detail",
            "ready_at",
        ]
    )
    audit.record(
        Actor.for_system("registry.import"),
        "model_version.ready",
        version,
        after={**version.snapshot(), "has_chat_template": version.has_chat_template},
    )
    return version


def _fail(version: ModelVersion, reason: str) -> None:
    version.status, version.status_detail, version.progress_detail = VersionStatus.FAILED, reason, "failed"
    version.save(update_fields=["status", "status_detail", "progress_detail"])
    upload = version.import_options.get("upload_path")
    if upload:  # an uploaded archive (up to MAX_UPLOAD_BYTES) goes with the import, whoever ends it
        transaction.on_commit(lambda: Path(upload).unlink(missing_ok=True))
    audit.record(
        Actor.for_system("registry.import"),
        "model_version.failed",
        version,
        after={"status": "failed", "reason": reason},
    )


@transaction.atomic
def fail_import(version_id: int, reason: str) -> None:
    version = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model__owner_team")
        .get(pk=version_id)
    )
    if version.status == VersionStatus.IMPORTING:
        _fail(version, reason)


def reap_stale_imports(
    max_silence: timedelta = STALE_IMPORT_AFTER, give_up_after: timedelta = GIVE_UP_QUEUED_AFTER
) -> int:
    """No import stays 'importing' for ever. One silent for ``max_silence`` whose run holds its lease is
    alive (converting or downloading says nothing) and left alone; one still queued is sent again (``run``
    is idempotent; resends at least a quarter of its age apart, about 16 in a day), unless no worker took it
    up within ``give_up_after``; one started whose lease is gone (its worker died) is failed with the
    reason, and the work folder its run left deleted. Returns how many were failed."""
    now = timezone.now()
    cutoff = now - max_silence
    silent = ModelVersion.objects.filter(status=VersionStatus.IMPORTING, heartbeat_at__lt=cutoff)
    failed = 0
    rows = silent.order_by("pk").values_list("pk", "progress_detail", "created_at", "heartbeat_at")
    for version_id, progress_detail, created_at, heartbeat_at in rows:
        if lease_of(version_id).holder() is not None:
            continue  # a live run
        if (
            progress_detail == QUEUED
            and created_at >= now - give_up_after
            and heartbeat_at is not None  # never None: filtered on it
            and heartbeat_at > now - ((now - created_at) / 4)
        ):
            # Backing off: the longer it has waited, the longer between resends (the workers are busy, and
            # each copy a worker takes up while a run is live waits on its lease).
            continue
        if progress_detail != QUEUED:
            fail_import(
                version_id,
                f"The import stopped reporting progress for {int(max_silence.total_seconds())}s "
                "(its worker died?). Start it again.",
            )
            remove_work(version_id)  # its dead run's, when it ran on this machine
            failed += 1
        elif created_at < now - give_up_after:
            hours = int(give_up_after.total_seconds() // 3600)
            fail_import(
                version_id,
                f"No worker took the import up within {hours} h (the workers busy or stopped?). Start it "
                "again, or ask an admin to check the workers.",
            )
            failed += 1
        elif silent.filter(pk=version_id, progress_detail=QUEUED).update(heartbeat_at=now):
            # Counted from now: sent again, it has at least ``max_silence`` to start before the next resend.
            logger.warning(
                "import of version %s still queued since before %s: sent again", version_id, cutoff
            )
            # By the task's name: the task module builds on this one.
            current_app.signature("registry.import_version", args=[version_id]).apply_async()
    return failed

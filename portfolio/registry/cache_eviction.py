"""A machine's copies of artifacts that no longer exist, deleted.

Engines, trainers and ingests load a version's files from a verified local copy under ``ARTIFACT_CACHE``
(``artifacts.materialize_version``; tokenizers under ``tokenizers/``), kept for the next start. Nothing took
a copy away: a fine-tune's superseded checkpoints, and versions whose stored files were purged, stayed on every
machine that had loaded them, gigabytes each, for good.

Once its artifact's row is deleted nobody can ask for a copy again (a copy is made from the row's manifest),
so each node agent, and any process as it makes a copy, deletes those copies, at most every ``EVERY_SECONDS``: renamed first to a staging name
(``storage`` never takes a half-deleted copy for a whole one, and clears what a crash leaves), then removed. A
copy made less than ``KEEP_SECONDS`` ago is kept (a registration records its artifact after writing it), and
so is one that a process on this machine names in its command line (an engine started from it).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import psutil
from django.conf import settings

from portfolio.registry.models import Artifact

logger = logging.getLogger(__name__)

EVERY_SECONDS = 3600.0
KEEP_SECONDS = 3600.0
# An artifact's id: the sha256 of its manifest (``storage``); anything else in the cache is not a copy.
_ARTIFACT_ID = re.compile(r"[0-9a-f]{64}")
_last_pass = 0.0


def _copies(root: Path) -> list[Path]:
    found = []
    for folder in (root, root / "tokenizers"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if _ARTIFACT_ID.fullmatch(p.name) and p.is_dir()]
    return found


def _named_by_processes() -> str:
    """Every argument of this machine's processes, as one string to search."""
    arguments: list[str] = []
    for process in psutil.process_iter(["cmdline"]):
        arguments += process.info["cmdline"] or []
    return "\n".join(arguments)


def _made(copy: Path) -> float:
    """When the copy was made; now for one gone meanwhile (another process of this machine evicted it)."""
    try:
        return copy.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def evict_deleted(root: Path | None = None, *, now: float | None = None) -> list[Path]:
    """Delete the copies under ``root`` (``ARTIFACT_CACHE``) of artifacts whose rows are gone; those deleted."""
    root = Path(settings.ARTIFACT_CACHE) if root is None else root
    now = time.time() if now is None else now
    copies = _copies(root)
    if not copies:
        return []
    recorded = set(Artifact.objects.filter(pk__in={p.name for p in copies}).values_list("pk", flat=True))
    gone = [p for p in copies if p.name not in recorded and now - _made(p) >= KEEP_SECONDS]
    if not gone:
        return []
    named = _named_by_processes()
    return [copy for copy in gone if str(copy) not in named and _evict(copy)]


def evict_copies_of(artifact_id: str, root: Path | None = None) -> list[Path]:
    """Delete this machine's copies (under ``root``, ``ARTIFACT_CACHE``) of one artifact whose row was just
    deleted (a purge's), whatever their age: ``evict_deleted`` keeps a copy for an hour and runs at most
    hourly, and only where a copy is made, so a purged version's files stayed on the web host that showed
    its rows. One still recorded (stored again meanwhile) is kept, and so is one a process names."""
    root = Path(settings.ARTIFACT_CACHE) if root is None else root
    if not _ARTIFACT_ID.fullmatch(artifact_id):
        return []
    copies = [p for p in (root / artifact_id, root / "tokenizers" / artifact_id) if p.is_dir()]
    if not copies or Artifact.objects.filter(pk=artifact_id).exists():
        return []
    named = _named_by_processes()
    return [copy for copy in copies if str(copy) not in named and _evict(copy)]


def _evict(copy: Path) -> bool:
    """Renamed to a staging name first (``storage`` never takes a half-deleted copy for a whole one, and
    clears what a crash leaves), then removed; whether it was this call that removed it."""
    staging = copy.with_name(f".{copy.name}-evicting")
    try:
        copy.rename(staging)
    except OSError:
        return False  # removed meanwhile by another process
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("artifact cache: deleted the copy of %s (its artifact no longer exists)", copy.name)
    return True


def evict_due(node_name: str = "") -> None:
    """``evict_deleted`` at most every ``EVERY_SECONDS`` in this process: the node agent loop's hook, and what
    every copy made anywhere calls (``artifacts.local_copy``)."""
    global _last_pass
    if time.monotonic() - _last_pass < EVERY_SECONDS and _last_pass:
        return
    _last_pass = time.monotonic()
    evict_deleted()

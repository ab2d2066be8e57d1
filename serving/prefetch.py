"""Model files copied to the node off its reconcile pass.

The node agent reconciles all of a node's replicas in one pass under the node's lock. A replica's first
start on a node copies its version's files from the artifact store, which for a large model on a slow link
takes minutes: inside the pass, every other replica of the node waited (a crashed engine was not restarted,
nor its compute interval closed, and stops waited). Here a copy runs in a thread of its own; the pass waits
for it ``WAIT_SECONDS`` at most (a small model's copy is done by then, as before), then leaves the replica
pending and goes on. A later pass finds the copy done and starts the engine, or gets the copy's error.

Contract: one copy per destination at a time on the node (a thread per destination in this process, and a
file lock across the agent's processes; ``materialize`` writes aside and renames); the copy's thread touches only files and the store, never
the database (a corrupt artifact is marked by the caller, in its own thread).
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from portfolio.registry.artifacts import mark_artifact_health
from portfolio.registry.hashing import Manifest
from portfolio.registry.models import ModelVersion
from portfolio.registry.storage import CorruptArtifact, materialize
from portfolio.registry.stores import default_store

logger = logging.getLogger("serving.agent")

WAIT_SECONDS = 10.0


@dataclass
class _Copy:
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


_copies: dict[Path, _Copy] = {}
_guard = threading.Lock()


def _run(copy: _Copy, manifest: Manifest, destination: Path) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with (destination.parent / f".{destination.name}.lock").open("w") as lock:
            # Passes run in the agent's loop and in its pool children: a copy another of them is making is
            # waited for, then found in place, not made a second time beside it (twice the bandwidth and disk).
            fcntl.flock(lock, fcntl.LOCK_EX)
            materialize(default_store(), manifest, destination)
    except BaseException as exc:  # noqa: BLE001 - handed to the pass that asks next, which reports it
        copy.error = exc
    finally:
        copy.done.set()


def local_copy(version: ModelVersion, *, wait: float | None = None) -> Path | None:
    """The version's verified local copy, or None while it is still being copied (started here if no copy
    runs). A copy that failed raises its error to the next caller, once; the call after that copies again."""
    artifact = version.artifact
    if artifact is None:
        raise CorruptArtifact(version.label, "has no stored artifact")
    destination = Path(settings.ARTIFACT_CACHE) / artifact.id
    with _guard:
        copy = _copies.get(destination)
        if copy is None:
            if destination.exists():  # complete: copies are renamed into place whole
                return destination
            copy = _copies[destination] = _Copy()
            threading.Thread(
                target=_run, args=(copy, artifact.manifest(), destination), name=f"copy {artifact.id[:12]}",
                daemon=True,  # a worker shutting down does not wait for a copy: the next agent starts it again
            ).start()  # fmt: skip
    if not copy.done.wait(WAIT_SECONDS if wait is None else wait):
        return None
    with _guard:
        if _copies.get(destination) is copy:
            del _copies[destination]
    if copy.error is not None:
        if isinstance(copy.error, CorruptArtifact):
            mark_artifact_health(artifact.id, [str(copy.error)])
        raise copy.error
    return destination


def local_copies(versions: dict[str, ModelVersion]) -> dict[str, Path] | None:
    """Each named version's local copy, or None while any of them is still being copied (all are started
    at once: an engine with adapters waits for the slowest, not for the sum)."""
    started = {name: local_copy(version, wait=0) for name, version in versions.items()}
    deadline = time.monotonic() + WAIT_SECONDS
    copies: dict[str, Path] = {}
    for name, path in started.items():
        path = path or local_copy(versions[name], wait=max(0.0, deadline - time.monotonic()))
        if path is None:
            return None
        copies[name] = path
    return copies

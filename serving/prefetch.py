"""Model files copied to the node off its reconcile pass.

The node agent reconciles all of a node's replicas in one pass under the node's lock. A replica's first
start on a node copies its version's files from the artifact store, which for a large model on a slow link
takes minutes: inside the pass, every other replica of the node waited (a crashed engine was not restarted,
nor its compute interval closed, and stops waited). Here a copy runs in a thread of its own; a pass waits
for the copies it asks for ``WAIT_SECONDS`` at most in all, however many of its replicas and adapters ask
(``one_wait``; a small model's copy is done by then, as before), then leaves those replicas pending and goes
on. A later pass finds the copy done and starts the engine, or gets the copy's error.

Contract: one copy per destination at a time on the node (a thread per destination in this process, and a
file lock across the agent's processes; ``materialize`` writes aside and renames); the copy's thread touches
only files and the store, never the database (a corrupt artifact is marked by the caller, in its own thread).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
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
# A failed copy's error is news to the passes just after it, not to a start hours later in the same process:
# that start would fail for a long-gone hitch (a crash and back-off; a corrupt artifact marked again though
# repaired since) instead of copying again.
ERROR_KEPT_SECONDS = 60.0


@dataclass
class _Copy:
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    finished: float = 0.0  # time.monotonic() once done
    marked: bool = False  # its corrupt artifact recorded as such: once, not by every caller told

    def settled(self, destination: Path) -> bool:
        """Done, and nothing left to tell: its files are in place, or its error is too old to raise."""
        return self.done.is_set() and (
            destination.exists() or time.monotonic() - self.finished > ERROR_KEPT_SECONDS
        )


class _Wait:
    """What is left of one pass's wait for copies, counted down by each wait."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    def until_done(self, copy: _Copy) -> bool:
        began = time.monotonic()
        try:
            return copy.done.wait(self.left)
        finally:
            self.left = max(0.0, self.left - (time.monotonic() - began))


_copies: dict[Path, _Copy] = {}
_guard = threading.Lock()
_this_pass: contextvars.ContextVar[_Wait | None] = contextvars.ContextVar("prefetch_wait", default=None)


def _forget_copies() -> None:
    # A forked process (billiard replacing a dead pool child) has none of the copies' threads: their entries
    # would never be done, every pass in it leaving the replica pending; nor the thread holding the guard.
    global _guard
    _copies.clear()
    _guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_copies)


@contextlib.contextmanager
def one_wait() -> Iterator[None]:
    """Within it (a reconcile pass), copies are waited for ``WAIT_SECONDS`` in all, not each: a pass with
    several replicas or adapters being copied held the node's lock for several times that. Nested, the
    outer one's wait is shared."""
    if _this_pass.get() is not None:
        yield
        return
    token = _this_pass.set(_Wait(WAIT_SECONDS))
    try:
        yield
    finally:
        _this_pass.reset(token)


def _run(copy: _Copy, manifest: Manifest, destination: Path) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with (destination.parent / f".{destination.name}.lock").open("w") as lock:
            # Passes run in the agent's loop and in its pool children: a copy another of them is making is
            # waited for, then found in place, not made a second time beside it (twice the bandwidth and disk).
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                materialize(default_store(), manifest, destination)
            finally:
                # Unlocked, not just closed: a pool child forked meanwhile shares this open file, and the lock
                # would stay held as long as it lives (every later copy waiting in flock for good).
                fcntl.flock(lock, fcntl.LOCK_UN)
    except BaseException as exc:  # noqa: BLE001 - handed to the pass that asks next, which reports it
        copy.error = exc
    finally:
        copy.finished = time.monotonic()
        copy.done.set()


def _copy_of(artifact, destination: Path) -> _Copy | None:
    """The copy to ``destination`` under way or just finished, started here if none is; None when the files
    are in place."""
    with _guard:
        copy = _copies.get(destination)
        if copy is not None and copy.settled(destination):
            del _copies[destination]
            copy = None
        if copy is None:
            if destination.exists():  # complete: copies are renamed into place whole
                return None
            copy = _Copy()
            threading.Thread(
                target=_run, args=(copy, artifact.manifest(), destination), name=f"copy {artifact.id[:12]}",
                daemon=True,  # a worker shutting down does not wait for a copy: the next agent starts it again
            ).start()  # fmt: skip
            _copies[destination] = copy  # only once its thread runs: else no thread would ever finish it
        return copy


def begin(version: ModelVersion) -> None:
    """Start copying the version's files unless they are in place or a copy runs; waits for nothing, and
    leaves a finished copy's error to the next ``local_copy`` (whose caller says it): taking it here, a launch
    that waited for its base's files dropped a failing adapter's error and copied it again at every pass."""
    if version.artifact is not None:
        _copy_of(version.artifact, Path(settings.ARTIFACT_CACHE) / version.artifact.id)


def local_copy(
    version: ModelVersion, *, wait: float | None = None, repeat_error: bool = False
) -> Path | None:
    """The version's verified local copy, or None while it is still being copied (started here if no copy
    runs). A copy that failed raises its error to the next caller within ``ERROR_KEPT_SECONDS``, once, unless
    the files are in place by then; the call after that copies again (a start after its back-off retries).
    With ``repeat_error`` (an adapter's copy, asked for at every pass by each replica serving it), an error
    other than a passing one (``OSError``) is raised to every caller within ``ERROR_KEPT_SECONDS`` and the
    files are copied again only after that: raised once, it reached one replica of those waiting for it
    (another waited out its start limit), and a ready replica copied a corrupt adapter again at every pass.
    ``wait``: how long to wait for the copy; by default what is left of the pass's wait (``one_wait``), or
    ``WAIT_SECONDS`` outside a pass."""
    artifact = version.artifact
    if artifact is None:
        raise CorruptArtifact(version.label, "has no stored artifact")
    destination = Path(settings.ARTIFACT_CACHE) / artifact.id
    copy = _copy_of(artifact, destination)
    if copy is None:
        return destination
    waiting = _Wait(wait) if wait is not None else _this_pass.get() or _Wait(WAIT_SECONDS)
    if not waiting.until_done(copy):
        return None
    error = None if destination.exists() else copy.error
    # A passing failure (the store away, a disk full) is not kept: each caller's next pass copies again.
    kept = repeat_error and error is not None and not isinstance(error, OSError)
    with _guard:
        if _copies.get(destination) is copy and not kept:
            del _copies[destination]  # else kept until its error is old (``_Copy.settled``)
    if error is None:
        return destination
    if isinstance(error, CorruptArtifact) and not copy.marked:
        mark_artifact_health(artifact.id, [str(error)])
        copy.marked = True  # once recorded: a mark that failed is made by the next caller
    # Raised again and again, one exception would gather every raise's frames (and their objects).
    raise error.with_traceback(None) if kept else error

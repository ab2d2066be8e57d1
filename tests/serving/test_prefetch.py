"""A model's files are copied to a node off its reconcile pass: a slow copy leaves its replica pending and
the pass goes on with the node's other replicas; a later pass starts the engine once the copy is done."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings

from portfolio.billing.models import ComputeInterval
from portfolio.registry import storage
from portfolio.registry.choices import Health
from portfolio.registry.models import Artifact
from portfolio.registry.stores import default_store
from serving import agent, prefetch, processes, reconcile
from serving.choices import ReplicaState
from serving.models import DeploymentEvent, Replica
from tests.conftest import actor_for
from tests.registry.conftest import ready_base
from tests.serving.conftest import SMOLLM2_SHAPE, deploy, live

REAL_LOCAL_COPY = prefetch.local_copy  # the ``engines`` fixture replaces it

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(settings, tmp_path):
    settings.ARTIFACT_ROOT, settings.ARTIFACT_CACHE = tmp_path / "store", tmp_path / "cache"
    default_store.cache_clear()
    yield default_store()
    default_store.cache_clear()


@pytest.fixture
def held_copy(monkeypatch):
    """Copies out of the store wait until the test lets them go (at most 20 s): a large model on a slow link."""
    go, copying = threading.Event(), []
    real = storage.copy_verified

    def slow(store, entry, out):
        copying.append(entry.path)
        go.wait(20)
        real(store, entry, out)

    monkeypatch.setattr(storage, "copy_verified", slow)
    monkeypatch.setattr(prefetch, "WAIT_SECONDS", 0.2)
    yield go, copying
    go.set()


def stored_version(store, tmp_path, org, team, name: str = "tuned-model"):
    """A ready base version whose one file is in the store and not yet on the node."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "llama", "_name_or_path": "{name}"}}')
    manifest = storage.store_directory(store, folder)
    artifact = Artifact.objects.record(manifest, store.uri(manifest.artifact_id))
    return ready_base(actor_for(org["engineer"]), team, name, artifact, parameter_count=134_515_008,
                      shape=SMOLLM2_SHAPE, dtype="bfloat16")  # fmt: skip


def placed(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    (replica,) = live(deployment)
    return replica


def copied(version) -> Path:
    return Path(settings.ARTIFACT_CACHE) / version.artifact_id


def test_a_slow_copy_leaves_its_replica_pending_while_the_pass_tends_the_nodes_other_replicas(
    engines, store, held_copy, tmp_path, monkeypatch, org, owner, team, base_version, pool, node
):
    go, copying = held_copy
    # The engines' stand-in: a version already on the node; the copy of any other is real (and held).
    monkeypatch.setattr(prefetch, "local_copy", lambda version, wait=None: (
        tmp_path if version.pk == base_version.pk else REAL_LOCAL_COPY(version, wait=wait)))  # fmt: skip
    running = placed(deploy(owner, team, base_version, pool, name="running-bot"))
    agent.reconcile_node(node.name)
    running.refresh_from_db()
    assert running.state == ReplicaState.STARTING and running.pid
    version = stored_version(store, tmp_path, org, team)
    pending = placed(deploy(owner, team, version, pool, name="new-bot"))
    processes.stop(processes.find(running.pid, running.pk), grace=5)  # meanwhile the first engine dies

    agent.reconcile_node(node.name)

    assert copying == ["config.json"], "the copy started"
    assert not copied(version).exists(), "the pass did not wait for the copy"
    pending.refresh_from_db()
    assert (pending.state, pending.pid) == (ReplicaState.PENDING, None)
    assert "Copying the model's files" in pending.state_detail
    running.refresh_from_db()
    assert running.state == ReplicaState.BACKOFF, "the node's other replica was tended in the same pass"
    assert all(
        run.ended_at for run in ComputeInterval.objects.filter(key__startswith=f"replica:{running.pk}:")
    )

    agent.reconcile_node(node.name)  # still copying: not a second copy, nor a second event
    assert copying == ["config.json"]
    assert DeploymentEvent.objects.filter(replica=pending, kind="copying").count() == 1

    go.set()
    deadline = time.monotonic() + 20
    while not copied(version).exists():
        assert time.monotonic() < deadline, "the copy did not finish"
        time.sleep(0.05)
    agent.reconcile_node(node.name)
    pending.refresh_from_db()
    assert pending.state == ReplicaState.STARTING and pending.pid


def test_a_copy_that_found_the_files_damaged_raises_once_and_marks_the_artifact_corrupt(
    store, tmp_path, org, team
):
    version = stored_version(store, tmp_path, org, team)
    (blob,) = [
        p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.read_bytes().startswith(b'{"model')
    ]
    blob.write_text("tampered")
    with pytest.raises(storage.CorruptArtifact, match="config.json"):
        prefetch.local_copy(version, wait=20)
    version.artifact.refresh_from_db()
    assert version.artifact.health == Health.CORRUPT
    assert not copied(version).exists()
    with pytest.raises(storage.CorruptArtifact):  # the next call copies again (the store may be repaired)
        prefetch.local_copy(version, wait=20)


def test_a_copy_another_process_of_the_agent_is_making_is_waited_for_not_made_twice(
    store, held_copy, tmp_path, org, team
):
    """The agent's loop and its pool children each reconcile the node: each had its own record of copies
    under way, so a second process started a second full copy of the same model beside the first."""
    go, copying = held_copy
    version = stored_version(store, tmp_path, org, team)
    assert prefetch.local_copy(version, wait=0) is None
    deadline = time.monotonic() + 10
    while not copying:
        assert time.monotonic() < deadline, "the first copy did not start"
        time.sleep(0.05)
    prefetch._copies.clear()  # noqa: SLF001 - what another process of the agent knows of this one's copy
    assert prefetch.local_copy(version, wait=0.5) is None
    go.set()
    assert prefetch.local_copy(version, wait=20) == copied(version)
    time.sleep(0.5)  # the first copy's thread ends too
    assert copying == ["config.json"], "the file was copied once"


def test_a_pass_waits_for_its_copies_once_in_all_not_once_per_replica(
    store, held_copy, tmp_path, monkeypatch, org, owner, team, pool, node
):
    """Each replica's start waited WAIT_SECONDS for its copy: a pass with three being copied held the node's
    lock three times as long, every other replica of the node waiting behind it."""
    go, copying = held_copy
    monkeypatch.setattr(prefetch, "WAIT_SECONDS", 3.0)
    pending = []
    for name in ("bot-a", "bot-b", "bot-c"):
        deployment = deploy(owner, team, stored_version(store, tmp_path, org, team, name), pool, name=name)
        pending.append(
            Replica.objects.create(
                deployment=deployment, node=node, generation=deployment.generation, host=node.address
            )
        )

    began = time.monotonic()
    agent.reconcile_node(node.name)

    # 3 s in all, with room for a slow runner; waiting per replica took 9 s.
    assert time.monotonic() - began < 6, "the pass waited for each copy in turn"
    assert copying == ["config.json"] * 3, "every copy started"
    for replica in pending:
        replica.refresh_from_db()
        assert "Copying the model's files" in replica.state_detail


# --- Faults around a copy: a store, artifact and versions of the test's making ------------------------------


def fake_version(artifact_id: str, manifest: Callable[[], Any] = lambda: None) -> Any:
    artifact = SimpleNamespace(id=artifact_id, manifest=manifest)
    return SimpleNamespace(label=f"{artifact_id}:1", artifact=artifact, artifact_id=artifact_id)


@pytest.fixture
def copier(settings, tmp_path, monkeypatch):
    """Copies made without a store: each runs the next of the test's ``steps`` (held, failed) before putting
    the files in place; ``entered`` is set once a copy holds its file lock. Held copies go at the end."""
    settings.ARTIFACT_CACHE = tmp_path / "cache"
    copier = SimpleNamespace(steps=[], entered=threading.Event(), go=threading.Event())

    def materialize(store, manifest, destination):
        copier.entered.set()
        if copier.steps:
            copier.steps.pop(0)()
        destination.mkdir()
        return destination

    monkeypatch.setattr(prefetch, "materialize", materialize)
    monkeypatch.setattr(prefetch, "default_store", lambda: None)
    yield copier
    copier.go.set()


def held_then(go: threading.Event, error: BaseException | None = None) -> Callable[[], None]:
    """A copy under way until ``go`` (at most 20 s), then failed with ``error`` if one is given."""

    def step() -> None:
        go.wait(20)
        if error is not None:
            raise error

    return step


def finished(version) -> prefetch._Copy:  # noqa: SLF001
    copy = prefetch._copies[copied(version)]  # noqa: SLF001
    assert copy.done.wait(10), "the copy did not end"
    return copy


@contextlib.contextmanager
def forked(child: Callable[[], int], holding: threading.Lock | None = None) -> Iterator[int]:
    """A child forked now, as billiard forks a pool child to replace a dead one, from the process a copy runs
    in (``holding`` held by this thread at the fork); it runs ``child`` and exits with what it returns.
    Killed and reaped at the end."""
    with holding or contextlib.nullcontext():
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns into the tests
            code = 1
            try:
                code = child()
            finally:
                os._exit(code)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def exit_code(pid: int, timeout: float = 10) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return None


def test_a_pool_child_forked_during_a_copy_does_not_keep_the_copys_file_lock(copier):
    """The child shared the lock's open file: closing the agent's handle no longer freed the lock, and every
    later copy of the model waited in flock for as long as the child lived, its replica pending for good."""
    version = fake_version("forked-lock")
    copier.steps.append(held_then(copier.go, OSError("store unreachable for a moment")))
    assert prefetch.local_copy(version, wait=0) is None
    assert copier.entered.wait(10), "the copy did not start"
    with forked(lambda: time.sleep(20) or 0):
        copier.go.set()
        with pytest.raises(OSError, match="unreachable"):
            prefetch.local_copy(version, wait=10)
        assert prefetch.local_copy(version, wait=5) == copied(version), "the retry waited on the child's lock"


def test_a_child_forked_during_a_copy_forgets_it_and_has_a_guard_of_its_own(copier):
    """The copy's thread is not in the child: waited on there, its entry would never be done; nor would a
    guard another of the parent's threads held at the fork ever be released."""
    version = fake_version("forked-copies")
    copier.steps.append(held_then(copier.go))
    assert prefetch.local_copy(version, wait=0) is None

    def child() -> int:
        fresh = not prefetch._copies and prefetch._guard.acquire(timeout=2)  # noqa: SLF001
        return 0 if fresh else 1

    with forked(child, holding=prefetch._guard) as pid:  # noqa: SLF001 - as another thread of the agent may
        assert exit_code(pid) == 0


def test_a_failed_copys_error_is_not_raised_to_a_start_long_after_it(copier):
    """A pass gave up waiting; the copy then failed on a passing hitch; an hour later a start of the version in
    the same process got that error (a crash, a back-off) instead of a fresh copy."""
    version = fake_version("stale-error")
    copier.steps.append(held_then(copier.go, OSError("store unreachable an hour ago")))
    assert prefetch.local_copy(version, wait=0) is None
    copier.go.set()
    finished(version).finished -= prefetch.ERROR_KEPT_SECONDS + 3600
    assert prefetch.local_copy(version, wait=10) == copied(version)


def test_a_failed_copys_error_is_not_raised_once_the_files_are_in_place(copier, monkeypatch):
    """Another process of the agent copied the files meanwhile: a start raised the stale error, and a corrupt
    one marked the artifact corrupt again, though repaired, its replica failed."""
    marked = []
    monkeypatch.setattr(prefetch, "mark_artifact_health", lambda *args: marked.append(args))
    version = fake_version("in-place")
    copier.steps.append(held_then(copier.go, storage.CorruptArtifact("in-place:1", "config.json differs")))
    assert prefetch.local_copy(version, wait=0) is None
    copied(version).mkdir(parents=True)
    copier.go.set()
    assert finished(version).error is not None
    assert prefetch.local_copy(version, wait=10) == copied(version)
    assert marked == []


class _NoThread(threading.Thread):
    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def _bad_files() -> None:
    raise ValueError("the artifact's files are not valid JSON")


@pytest.mark.parametrize("failure", ["thread", "manifest"])
def test_a_copy_that_could_not_start_is_started_by_the_next_call(copier, monkeypatch, failure):
    """Its entry was kept with no thread to finish it: every later call found a copy under way, for good."""
    version = fake_version(f"unstarted-{failure}", _bad_files if failure == "manifest" else lambda: None)
    with monkeypatch.context() as patch:
        if failure == "thread":
            patch.setattr(prefetch, "threading", SimpleNamespace(Thread=_NoThread))
        with pytest.raises((RuntimeError, ValueError)):
            prefetch.local_copy(version, wait=0)
    version.artifact.manifest = lambda: None
    assert prefetch.local_copy(version, wait=5) == copied(version)


def test_beginning_a_copy_neither_takes_its_error_nor_copies_again_while_the_error_is_news(copier):
    """A launch begins its adapters' copies while it waits for the base's, pass after pass: taking a failed
    copy's error there (``local_copy(wait=0)`` raises it, once) dropped it unsaid and copied the adapter again
    at every pass, with no back-off. ``begin`` leaves the error to the next ``local_copy``."""
    version = fake_version("adapter")
    copier.steps.append(held_then(copier.go, OSError("store unreachable")))
    prefetch.begin(version)
    copier.go.set()
    first = finished(version)
    for _ in range(3):
        prefetch.begin(version)
    assert prefetch._copies[copied(version)] is first, "no new copy while its error is news"  # noqa: SLF001
    with pytest.raises(OSError, match="store unreachable"):
        prefetch.local_copy(version, wait=0)
    prefetch.begin(version)  # the error said: a later beginning copies again
    assert prefetch.local_copy(version, wait=10) == copied(version)


def test_an_adapters_failed_copy_is_told_to_every_replica_asking_and_made_again_once_its_error_is_old(
    copier, monkeypatch
):
    """Raised once, an adapter's copy error reached the first replica asking: a second new replica waiting for
    the adapter found a fresh copy under way at each pass (the first, ready, asked before it and took each
    error) and waited out its start limit; and every pass copied a corrupt adapter again."""
    marked = []
    monkeypatch.setattr(prefetch, "mark_artifact_health", lambda *args: marked.append(args))
    version = fake_version("corrupt-adapter")
    copier.steps.append(held_then(copier.go, storage.CorruptArtifact("corrupt-adapter:1", "adapter differs")))
    assert prefetch.local_copy(version, wait=0, repeat_error=True) is None
    copier.go.set()
    first = finished(version)
    frames = set()
    for _ in range(3):  # each replica serving it, at each pass: the same error, no copy made again
        with pytest.raises(storage.CorruptArtifact, match="adapter differs") as raised:
            prefetch.local_copy(version, wait=0, repeat_error=True)
        frames.add(len(traceback.extract_tb(raised.value.__traceback__)))
    assert len(frames) == 1, "each raise added its frames to the one exception kept"
    assert prefetch._copies[copied(version)] is first  # noqa: SLF001
    assert len(marked) == 1, "marked corrupt once"
    first.finished -= prefetch.ERROR_KEPT_SECONDS + 1  # old news: the store may have been repaired
    assert prefetch.local_copy(version, wait=10, repeat_error=True) == copied(version)


def test_an_adapters_passing_copy_failure_is_not_kept_and_a_failed_mark_is_made_again(copier, monkeypatch):
    """Found by review: kept for a minute, a store away for a moment left a ready replica without the adapter a
    minute after it was back; and the corrupt mark, noted as made before it was, was lost when it failed."""
    version = fake_version("adapter-away")
    copier.steps.append(held_then(copier.go, OSError("store unreachable")))
    assert prefetch.local_copy(version, wait=0, repeat_error=True) is None
    copier.go.set()
    finished(version)
    with pytest.raises(OSError, match="store unreachable"):
        prefetch.local_copy(version, wait=0, repeat_error=True)
    assert prefetch.local_copy(version, wait=10, repeat_error=True) == copied(version)  # copied again at once

    marks: list[str] = []

    def mark(artifact_id, problems):
        marks.append(artifact_id)
        if len(marks) == 1:
            raise RuntimeError("database away")

    monkeypatch.setattr(prefetch, "mark_artifact_health", mark)
    corrupt = fake_version("adapter-corrupt")
    copier.steps.append(held_then(copier.go, storage.CorruptArtifact("adapter-corrupt:1", "differs")))
    with pytest.raises(RuntimeError, match="database away"):
        prefetch.local_copy(corrupt, wait=10, repeat_error=True)
    for _ in range(2):
        with pytest.raises(storage.CorruptArtifact):
            prefetch.local_copy(corrupt, wait=0, repeat_error=True)
    assert marks == ["adapter-corrupt", "adapter-corrupt"]

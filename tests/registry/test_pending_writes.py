"""What a registration killed while it stored its files wrote is found and deleted by the sweep.

A killed run (SIGKILL, a lost machine) runs no ``except``: these tests stop a registration halfway the same
way, by a write that raises and no clean-up after it. Live registrations run on database sessions of their
own (threads), as the import worker, the trainer and the sweep do."""

from __future__ import annotations

import contextlib
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from portfolio.registry import blobclaims, pending_writes
from portfolio.registry.hashing import sha256_file
from portfolio.registry.models import Artifact, PendingWrite
from portfolio.registry.pending_writes import PendingWrites
from portfolio.registry.storage import LocalStore, store_directory

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30


class Killed(BaseException):
    """The process dying at this write: nothing after it runs."""


class KilledAtSecondBlob(LocalStore):
    def __init__(self, root):
        super().__init__(root)
        self.puts = 0

    def put_blob(self, sha256, source, size):
        self.puts += 1
        if self.puts == 2:
            raise Killed
        super().put_blob(sha256, source, size)


@pytest.fixture
def folder(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.safetensors").write_bytes(b"weights" * 100)
    (files / "b.json").write_text('{"r": 8}')
    return files


def _digests(folder) -> list[str]:
    return [sha256_file(folder / name) for name in ("a.safetensors", "b.json")]


def _stop_halfway(store, folder, owner: str = "the import of version 7") -> PendingWrites:
    log = PendingWrites(owner)
    with pytest.raises(Killed), blobclaims.registering():
        store_directory(store, folder, before_write=log)
    return log


def test_what_a_registration_killed_while_storing_wrote_is_deleted_by_the_sweep(tmp_path, folder):
    store = KilledAtSecondBlob(tmp_path / "store")
    first, second = _digests(folder)
    _stop_halfway(store, folder)
    assert store.has_blob(first) and not store.has_blob(second)
    row = PendingWrite.objects.get()
    assert row.owner == "the import of version 7"
    assert row.written["blobs"] == [first, second], "each blob is noted before it is written"

    assert pending_writes.sweep(timedelta(hours=1), store) == 0, "a row just written is left alone"
    assert store.has_blob(first)
    assert pending_writes.sweep(timedelta(0), store) == 1
    assert not store.has_blob(first)
    assert not PendingWrite.objects.exists()


def test_the_sweep_keeps_what_a_recorded_artifact_refers_to(tmp_path, folder):
    """A run that died after recording its artifact, before deleting its row: the files are in use."""
    store = LocalStore(tmp_path / "store")
    log = PendingWrites("a fine-tune's checkpoint at step 40")
    with blobclaims.registering():
        manifest = store_directory(store, folder, before_write=log)
        Artifact.objects.record(manifest, store.uri(manifest.artifact_id))
    assert pending_writes.sweep(timedelta(0), store) == 1
    assert all(store.has_blob(digest) for digest in _digests(folder))
    assert not PendingWrite.objects.exists()


@contextlib.contextmanager
def _registration_in_flight(root, folder):
    """Another registration of the same files, on a session of its own: it finds them stored and claims
    them, and holds them (a slow upload of its last file) until the block ends; then it ends unrecorded."""
    stored, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def register() -> None:
        try:
            with blobclaims.registering():
                store_directory(LocalStore(root), folder)
                stored.set()
                release.wait(WAIT)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=register, daemon=True)
    thread.start()
    assert stored.wait(WAIT)
    try:
        yield
    finally:
        release.set()
        thread.join(WAIT)
    assert not errors


def test_the_sweep_keeps_the_blobs_and_the_row_of_a_registration_still_in_flight(tmp_path, folder):
    """Quiet for long is not dead: what a registration in flight holds is kept, and the row stays for a
    later sweep, which deletes it once that registration has ended without recording it."""
    store = KilledAtSecondBlob(tmp_path / "store")
    first, _ = _digests(folder)
    _stop_halfway(store, folder)
    with _registration_in_flight(tmp_path / "store", folder):
        assert pending_writes.sweep(timedelta(0), store) == 0
        assert store.has_blob(first)
        assert PendingWrite.objects.count() == 1
    PendingWrite.objects.update(updated_at=timezone.now() - timedelta(hours=2))
    assert pending_writes.sweep(timedelta(hours=1), store) == 1
    assert not store.has_blob(first)


def test_a_failed_registration_keeps_its_row_for_a_blob_another_one_claims(tmp_path):
    """Its clean-up keeps the blob that registration counts on, and its row too: the other one did not
    write the blob, and would not delete it if it failed as well."""
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"shared": true}')
    store = LocalStore(tmp_path / "store")
    log = PendingWrites("the import of version 8")
    with blobclaims.registering():
        store_directory(store, folder, before_write=log)
    digest = sha256_file(folder / "tokenizer.json")
    with _registration_in_flight(tmp_path / "store", folder):
        log.discard(store)
        assert store.has_blob(digest)
        assert PendingWrite.objects.count() == 1
    assert pending_writes.sweep(timedelta(0), store) == 1
    assert not store.has_blob(digest)


def test_a_registration_that_fails_deletes_what_it_wrote_and_leaves_no_row(tmp_path, folder):
    store = LocalStore(tmp_path / "store")
    log = PendingWrites("ingest #3")
    with blobclaims.registering():
        store_directory(store, folder, before_write=log)
    log.discard(store)
    assert not any(store.has_blob(digest) for digest in _digests(folder))
    assert not PendingWrite.objects.exists()


def test_a_store_that_fails_the_delete_leaves_the_row_to_the_sweep(tmp_path, folder, monkeypatch):
    store = LocalStore(tmp_path / "store")
    log = PendingWrites("ingest #4")
    with blobclaims.registering():
        store_directory(store, folder, before_write=log)

    def refuse(_digest):
        raise OSError("store unavailable")

    monkeypatch.setattr(store, "delete_blob", refuse)
    log.discard(store)
    assert PendingWrite.objects.count() == 1
    monkeypatch.undo()
    assert pending_writes.sweep(timedelta(0), store) == 1
    assert not any(store.has_blob(digest) for digest in _digests(folder))


def test_a_row_the_sweep_cannot_finish_goes_behind_the_others(tmp_path, folder, monkeypatch):
    """A store that refuses one row's delete must not hold the sweep on that row, run after run."""
    store = LocalStore(tmp_path / "store")
    refused, other = PendingWrites("ingest #5"), PendingWrites("ingest #6")
    with blobclaims.registering():
        store_directory(store, folder, before_write=refused)
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "c.bin").write_bytes(b"only the other one wrote this")
    with blobclaims.registering():
        store_directory(store, tmp_path / "more", before_write=other)
    long_ago = timezone.now() - timedelta(hours=3)
    PendingWrite.objects.filter(token=refused.token).update(updated_at=long_ago)
    PendingWrite.objects.filter(token=other.token).update(updated_at=long_ago + timedelta(minutes=1))
    monkeypatch.setattr(pending_writes, "ROWS_PER_SWEEP", 1)
    refusing = set(refused.written.blobs)
    delete = store.delete_blob

    def refuse_some(digest):
        if digest in refusing:
            raise OSError("object locked")
        delete(digest)

    monkeypatch.setattr(store, "delete_blob", refuse_some)
    assert pending_writes.sweep(timedelta(hours=1), store) == 0  # the first row in line: refused
    assert pending_writes.sweep(timedelta(hours=1), store) == 1, "the next run gets to the row behind it"
    assert not store.has_blob(other.written.blobs[0])
    assert list(PendingWrite.objects.values_list("token", flat=True)) == [refused.token]
    assert pending_writes.sweep(timedelta(hours=1), store) == 0, "the refused row waits another quiet period"
    assert PendingWrite.objects.get().updated_at > timezone.now() - timedelta(minutes=1)


def test_a_row_that_cannot_be_deleted_does_not_fail_the_registration(tmp_path, folder, monkeypatch):
    """The artifact is recorded: a database hiccup deleting the row must not turn that into an error."""
    from django.db import OperationalError
    from django.db.models import QuerySet

    store = LocalStore(tmp_path / "store")
    log = PendingWrites("fine-tune #9, attempt 1")
    with blobclaims.registering():
        manifest = store_directory(store, folder, before_write=log)
        Artifact.objects.record(manifest, store.uri(manifest.artifact_id))

    def gone(self):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(QuerySet, "delete", gone)
    log.recorded()
    monkeypatch.undo()
    assert PendingWrite.objects.count() == 1, "left to the sweep, which finds the files recorded"
    assert pending_writes.sweep(timedelta(0), store) == 1
    assert all(store.has_blob(digest) for digest in _digests(folder))

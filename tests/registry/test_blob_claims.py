"""Deleting unreferenced blobs never takes one a registration in flight has found stored and counts on.

Each registration and each delete runs on a database session of its own (threads), as the trainer, the
import worker and the reaper do."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from portfolio.registry import blobclaims
from portfolio.registry.artifacts import discard_if_unused
from portfolio.registry.hashing import sha256_file
from portfolio.registry.models import Artifact
from portfolio.registry.pending_writes import discard_unrecorded
from portfolio.registry.storage import LocalStore, Written, store_directory

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def folder(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "adapter_config.json").write_text('{"r": 8}')
    return files


def _in_thread(target) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_blob_a_registration_found_stored_is_not_deleted_before_it_is_recorded(store, folder):
    """A failed import left its blob (nothing records it); a checkpoint with the same file finds it stored,
    skips the upload, and is recorded only after the failed import's clean-up ran."""
    store_directory(store, folder)  # the earlier, failed registration's upload
    digest = sha256_file(folder / "adapter_config.json")
    looked_up, cleaned = threading.Event(), threading.Event()

    def register() -> None:
        with blobclaims.registering():
            manifest = store_directory(store, folder)
            looked_up.set()
            assert cleaned.wait(WAIT)
            Artifact.objects.record(manifest, store.uri(manifest.artifact_id))

    thread, errors = _in_thread(register)
    assert looked_up.wait(WAIT)
    try:
        assert discard_unrecorded(store, Written(blobs=[digest])) == []
    finally:
        cleaned.set()
        thread.join(WAIT)
    assert not errors
    assert store.has_blob(digest)
    artifact = Artifact.objects.get()
    assert [entry["sha256"] for entry in artifact.files] == [digest]


def test_a_blob_no_registration_holds_any_more_is_deleted(store, folder):
    store_directory(store, folder)
    digest = sha256_file(folder / "adapter_config.json")

    def look_and_give_up() -> None:
        with blobclaims.registering():
            store_directory(store, folder)

    thread, errors = _in_thread(look_and_give_up)
    thread.join(WAIT)
    assert not errors
    assert discard_unrecorded(store, Written(blobs=[digest])) == [digest]
    assert not store.has_blob(digest)


def test_a_delete_waits_a_moment_for_a_registration_to_end(store, folder):
    """A merge killed by its watcher holds its claims until PostgreSQL notices; the watcher's clean-up
    right after waits for that, rather than keep for good what the merge wrote."""
    store_directory(store, folder)
    digest = sha256_file(folder / "adapter_config.json")
    looked_up = threading.Event()

    def look_and_die_soon() -> None:
        with blobclaims.registering():
            store_directory(store, folder)
            looked_up.set()
            time.sleep(0.3)

    thread, errors = _in_thread(look_and_die_soon)
    assert looked_up.wait(WAIT)
    assert discard_unrecorded(store, Written(blobs=[digest])) == [digest]
    thread.join(WAIT)
    assert not errors
    assert not store.has_blob(digest)


def test_a_registration_waits_for_a_delete_under_way_and_stores_the_blob_again(store, folder):
    store_directory(store, folder)
    digest = sha256_file(folder / "adapter_config.json")
    started = threading.Event()

    def register() -> None:
        with blobclaims.registering():
            started.set()
            manifest = store_directory(store, folder)
            Artifact.objects.record(manifest, store.uri(manifest.artifact_id))

    with transaction.atomic():
        assert blobclaims.free(digest)  # a deleter holds it
        thread, errors = _in_thread(register)
        assert started.wait(WAIT)
        thread.join(0.5)
        assert thread.is_alive(), "the registration looked the blob up while it was being deleted"
        store.delete_blob(digest)
    thread.join(WAIT)
    assert not errors
    assert store.has_blob(digest)  # uploaded again once the delete was done
    assert Artifact.objects.count() == 1


def test_a_failed_registration_deletes_what_it_wrote_while_it_still_holds_it(store, folder):
    """The import's own clean-up runs inside its block: its own claims do not keep its blobs."""
    written = Written()

    def remember(so_far: Written) -> None:
        nonlocal written
        written = so_far

    with blobclaims.registering():
        manifest = store_directory(store, folder, before_write=remember)
        assert discard_unrecorded(store, written) == written.blobs != []
    assert not store.has_blob(written.blobs[0])
    assert not (store.root / "manifests" / f"{manifest.artifact_id}.json").exists()


def test_a_superseded_checkpoint_keeps_a_blob_another_registration_counts_on(store, folder):
    manifest = store_directory(store, folder)
    old = Artifact.objects.record(manifest, store.uri(manifest.artifact_id), verified=False)
    digest = manifest.files[0].sha256
    looked_up, deleted = threading.Event(), threading.Event()

    def register() -> None:
        with blobclaims.registering():
            again = store_directory(store, folder)
            looked_up.set()
            assert deleted.wait(WAIT)
            Artifact.objects.record(again, store.uri(again.artifact_id))

    thread, errors = _in_thread(register)
    assert looked_up.wait(WAIT)
    try:
        assert discard_if_unused(store, old.id)
    finally:
        deleted.set()
        thread.join(WAIT)
    assert not errors
    assert store.has_blob(digest)
    assert (store.root / "manifests" / f"{manifest.artifact_id}.json").exists()
    assert Artifact.objects.filter(pk=old.id).exists()  # recorded again by the registration


def test_two_registrations_deleting_a_blob_both_still_claim_neither_fails(store, folder):
    """Two failed imports of the same files both wrote a blob; each deleting it while still holding its
    own claim waits for the other's: PostgreSQL ends one wait as a deadlock, which means "held", not an
    error over the import's own."""
    store_directory(store, folder)
    digest = sha256_file(folder / "adapter_config.json")
    both_claim = threading.Barrier(2, timeout=WAIT)
    kept: list[list[str]] = []

    def fail_and_clean_up() -> None:
        with blobclaims.registering() as claims:
            claims(digest)
            both_claim.wait()
            kept.append(discard_unrecorded(store, Written(blobs=[digest])))

    threads = [_in_thread(fail_and_clean_up) for _ in range(2)]
    for thread, _ in threads:
        thread.join(WAIT)
    assert [errors for _, errors in threads] == [[], []]
    assert len(kept) == 2

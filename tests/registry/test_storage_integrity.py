"""What the artifact store refuses and cleans up: a file that changed while it was stored (never kept under
a digest it does not have), manifests written by registrations racing each other, and the partial files of
writers killed mid-write."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from portfolio.registry.hashing import FileEntry, Manifest
from portfolio.registry.storage import ABANDONED_AFTER, CorruptArtifact, LocalStore

ORIGINAL = b"weights-A"
DIGEST = hashlib.sha256(ORIGINAL).hexdigest()


@pytest.mark.parametrize(
    "changed", [b"weights-B", b"weights-A and more", b"weights"], ids=["other-bytes", "longer", "shorter"]
)
def test_a_file_that_changes_between_hashing_and_storing_is_refused_and_nothing_is_left(
    store, tmp_path, changed
):
    source = tmp_path / "model.safetensors"
    source.write_bytes(changed)  # after it was hashed as ORIGINAL
    with pytest.raises(CorruptArtifact, match="changed while it was being stored"):
        store.put_blob(DIGEST, source, len(ORIGINAL))
    assert not store.has_blob(DIGEST)


def test_a_refused_file_leaves_the_good_blob_already_under_its_digest_alone(store, tmp_path):
    source = tmp_path / "model.safetensors"
    source.write_bytes(ORIGINAL)
    store.put_blob(DIGEST, source, len(ORIGINAL))
    # Stored again (a concurrent registration, or a damaged blob rewritten) from a file changed meanwhile.
    source.write_bytes(b"weights-B")
    with pytest.raises(CorruptArtifact):
        store.put_blob(DIGEST, source, len(ORIGINAL))
    with store.open_blob(DIGEST) as blob:
        assert blob.read() == ORIGINAL


def test_a_large_file_changed_on_s3_is_refused_before_its_multipart_upload_completes(
    s3_store, tmp_path, monkeypatch
):
    upload = s3_store.client.put_object  # in parts of S3's smallest size, so that a small file takes three
    monkeypatch.setattr(
        s3_store.client, "put_object", lambda *a, **k: upload(*a, **(k | {"part_size": 5 << 20}))
    )
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"\0" * (11 << 20))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with source.open("r+b") as file:  # the last byte changes after it was hashed
        file.seek(-1, os.SEEK_END)
        file.write(b"\1")
    with pytest.raises(CorruptArtifact, match="changed while it was being stored"):
        s3_store.put_blob(digest, source, 11 << 20)
    assert not s3_store.has_blob(digest)
    assert list(s3_store.client._list_multipart_uploads(s3_store.bucket).uploads) == [], (
        "its parts were dropped"
    )


def put_at_once(store: LocalStore, manifest: Manifest, writers: int) -> None:
    """``put_manifest`` from ``writers`` threads released together; what any of them raised is raised."""
    start = threading.Barrier(writers)

    def put(_):
        start.wait()
        store.put_manifest(manifest)

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(put, range(writers)))


def test_registrations_of_the_same_manifest_at_once_all_succeed_and_leave_it_whole(tmp_path):
    # Large enough that writing it takes a while: the writers overlap.
    manifest = Manifest.of(FileEntry(f"shard-{i}.safetensors", i, "ab" * 32) for i in range(3000))
    for trial in range(10):
        store = LocalStore(tmp_path / str(trial))
        put_at_once(store, manifest, writers=4)
        assert store.read_manifest(manifest.artifact_id) == manifest
        assert [p.name for p in (store.root / "manifests").iterdir()] == [f"{manifest.artifact_id}.json"]


def test_partial_files_of_killed_writers_are_removed_after_an_hour_and_the_rest_kept(local_store, tmp_path):
    source = tmp_path / "model.safetensors"
    source.write_bytes(ORIGINAL)
    local_store.put_blob(DIGEST, source, len(ORIGINAL))
    manifest = Manifest.of([FileEntry("model.safetensors", len(ORIGINAL), DIGEST)])
    local_store.put_manifest(manifest)
    folder = local_store.blob_path(DIGEST).parent
    dead_blob, live_blob = folder / ".incoming-k1llg9", folder / ".incoming-w71te0"
    dead_manifest = local_store.root / "manifests" / f".{manifest.artifact_id}.json.x8q2.part"
    for partial in (dead_blob, live_blob, dead_manifest):
        partial.write_bytes(b"half a")
    long_ago = time.time() - ABANDONED_AFTER.total_seconds() - 60
    stored = [local_store.blob_path(DIGEST), local_store.root / "manifests" / f"{manifest.artifact_id}.json"]
    for path in (dead_blob, dead_manifest, *stored):  # what was stored long ago stays, of course
        os.utime(path, (long_ago, long_ago))

    assert local_store.remove_abandoned_writes() == 2
    assert not dead_blob.exists() and not dead_manifest.exists()
    assert live_blob.exists(), "a write under way is left alone"
    assert all(path.exists() for path in stored)
    assert local_store.read_manifest(manifest.artifact_id) == manifest


@pytest.mark.django_db
def test_the_periodic_sweep_removes_what_killed_writers_left_in_the_store(imports):
    """The sweep beat runs every 15 minutes (``registry.sweep_pending_writes``) clears the store's old partials."""
    from portfolio.registry import tasks
    from portfolio.registry.stores import default_store

    store = default_store()
    folder = store.blob_path(DIGEST).parent
    folder.mkdir(parents=True)
    partial = folder / ".incoming-k1llg9"
    partial.write_bytes(b"half a")
    long_ago = time.time() - ABANDONED_AFTER.total_seconds() - 60
    os.utime(partial, (long_ago, long_ago))

    tasks.sweep_pending_writes()

    assert not partial.exists()

"""The artifact store, on a local folder and on a real S3-protocol server: content-addressed,
stored once, streamed, and every read verified."""

from __future__ import annotations

import os
import urllib.request

import pytest

from portfolio.registry.hashing import sha256_file
from portfolio.registry.storage import (
    CorruptArtifact,
    LocalStore,
    materialize,
    read_text,
    store_directory,
    verify,
)


def test_an_artifact_is_named_by_its_manifest_and_lists_every_file(store, model_folder):
    manifest = store_directory(store, model_folder)
    assert [f.path for f in manifest.files] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]
    assert manifest.get("model.safetensors").sha256 == sha256_file(model_folder / "model.safetensors")
    assert store.read_manifest(manifest.artifact_id) == manifest
    assert len(manifest.artifact_id) == 64


def test_the_same_files_stored_twice_are_stored_once(store, model_folder, tmp_path):
    first = store_directory(store, model_folder)
    uploads = []
    original = store.put_blob
    store.put_blob = lambda *args: (uploads.append(args[0]), original(*args))
    second = store_directory(store, model_folder)
    assert first.artifact_id == second.artifact_id
    assert uploads == []


def test_what_a_store_call_writes_is_told_before_each_write_and_can_be_deleted_again(
    store, model_folder, tmp_path
):
    first = store_directory(store, model_folder)
    (model_folder / "model.safetensors").write_bytes(b"other weights")
    told = []
    second = store_directory(store, model_folder, before_write=lambda w: told.append(w.as_json()))
    new = second.get("model.safetensors").sha256
    # Only the new blob (the others were stored already), told before it was written; then the manifest.
    assert told == [{"blobs": [new], "manifest": None}, {"blobs": [new], "manifest": second.artifact_id}]
    store.delete_blob(new)
    store.delete_manifest(second.artifact_id)
    store.delete_blob(new)  # a second delete is no error
    assert not store.has_blob(new)
    assert all(store.has_blob(entry.sha256) for entry in first.files)
    from minio.error import S3Error

    with pytest.raises((FileNotFoundError, S3Error)) as gone:  # not any error: a missing manifest
        store.read_manifest(second.artifact_id)
    assert isinstance(gone.value, FileNotFoundError) or gone.value.code == "NoSuchKey"
    assert store.read_manifest(first.artifact_id) == first


def test_materialize_writes_a_verified_copy(store, model_folder, tmp_path):
    manifest = store_directory(store, model_folder)
    copy = materialize(store, manifest, tmp_path / "copy")
    assert sha256_file(copy / "model.safetensors") == sha256_file(model_folder / "model.safetensors")
    assert verify(store, manifest) == []
    assert "Tiny" in read_text(store, manifest, "README.md")


def test_a_flipped_byte_is_detected_and_named(local_store: LocalStore, model_folder, tmp_path):
    manifest = store_directory(local_store, model_folder)
    blob = local_store.blob_path(manifest.get("model.safetensors").sha256)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    problems = verify(local_store, manifest)
    assert [p.path for p in problems] == ["model.safetensors"]
    assert "sha256 mismatch" in problems[0].reason
    with pytest.raises(CorruptArtifact, match="model.safetensors"):
        materialize(local_store, manifest, tmp_path / "copy")
    assert not (tmp_path / "copy").exists(), "no half-written copy is left behind"


def test_a_flipped_byte_on_s3_is_detected_too(s3_store, model_folder):
    import io

    manifest = store_directory(s3_store, model_folder)
    entry = manifest.get("config.json")
    key = f"blobs/{entry.sha256[:2]}/{entry.sha256}"
    tampered = b"{" + (model_folder / "config.json").read_bytes()[1:-1] + b"]"
    s3_store.client.put_object(s3_store.bucket, key, io.BytesIO(tampered), len(tampered))
    assert [p.path for p in verify(s3_store, manifest)] == ["config.json"]


def test_a_missing_blob_is_reported_with_its_path(store, model_folder, tmp_path):
    manifest = store_directory(store, model_folder)
    store.delete_blob(manifest.get("config.json").sha256)
    assert [p.path for p in verify(store, manifest)] == ["config.json"]
    # And a copy for an engine or trainer fails as damaged, not with the store's own error.
    with pytest.raises(CorruptArtifact, match="config.json: missing from the store"):
        materialize(store, manifest, tmp_path / "copy")


def test_symbolic_links_in_a_folder_are_refused(local_store, model_folder):
    (model_folder / "evil").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        store_directory(local_store, model_folder)


def test_s3_creates_its_bucket_and_gives_presigned_download_urls(s3_store, model_folder):
    from datetime import timedelta

    assert s3_store.client.bucket_exists(s3_store.bucket)
    manifest = store_directory(s3_store, model_folder)
    entry = manifest.get("config.json")
    url = s3_store.download_url(entry.sha256, {"Content-Disposition": "attachment"}, timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == (model_folder / "config.json").read_bytes()


def test_streams_large_files_in_chunks_without_reading_them_whole(local_store, tmp_path, monkeypatch):
    big = tmp_path / "big"
    big.mkdir()
    with (big / "weights.safetensors").open("wb") as out:
        out.truncate(64 * 1024 * 1024)
    reads = []
    real_open = open

    class Spy:
        def __init__(self, handle):
            self.handle = handle

        def read(self, size=-1):
            reads.append(size)
            return self.handle.read(size)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(
        "pathlib.Path.open", lambda self, mode="r", *a, **k: Spy(real_open(self, mode, *a, **k))
    )
    store_directory(local_store, big)
    assert reads and all(0 < size <= 1024 * 1024 for size in reads)

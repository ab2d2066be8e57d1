"""The artifact cache's temporary copies: one left by a process killed mid-copy is removed when the artifact is
copied again (each retry would otherwise leave one more, of many GB), and a copy that loses the final rename to a
concurrent copy of the same artifact uses that one instead of failing."""

from __future__ import annotations

import os
import time

from portfolio.registry import storage
from portfolio.registry.hashing import sha256_file
from portfolio.registry.storage import materialize, store_directory


def _age(folder, seconds: float) -> None:
    past = time.time() - seconds
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (past, past), follow_symlinks=False)


def test_a_copy_abandoned_by_a_killed_process_is_removed_when_the_artifact_is_copied_again(
    local_store, model_folder, tmp_path
):
    manifest = store_directory(local_store, model_folder)
    cache = tmp_path / "cache"
    abandoned = cache / f".{manifest.artifact_id}-killed"
    (abandoned / "model.safetensors").parent.mkdir(parents=True)
    (abandoned / "model.safetensors").write_bytes(b"half of the weights")
    _age(abandoned, storage.ABANDONED_AFTER.total_seconds() + 60)
    in_progress = cache / f".{manifest.artifact_id}-copying"  # a live copy: written to a minute ago
    (in_progress / "model.safetensors").parent.mkdir(parents=True)
    (in_progress / "model.safetensors").write_bytes(b"a third of the weights")
    _age(in_progress, 60)
    other = cache / f".{'b' * 64}-killed"  # another artifact's: pruned when that one is copied
    other.mkdir()
    _age(other, storage.ABANDONED_AFTER.total_seconds() + 60)

    materialize(local_store, manifest, cache / manifest.artifact_id)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [manifest.artifact_id, in_progress.name, other.name]
    )


def test_a_copy_that_loses_the_rename_to_a_concurrent_copy_uses_that_one(
    local_store, model_folder, tmp_path, monkeypatch
):
    manifest = store_directory(local_store, model_folder)
    destination = tmp_path / "cache" / manifest.artifact_id
    real_copy = storage.copy_verified
    raced = []

    def copied_meanwhile_by_another_process(store, entry, out) -> None:
        real_copy(store, entry, out)
        if not raced:
            raced.append(entry.path)
            materialize(store, manifest, destination)  # the other copy: finished first, renamed into place

    monkeypatch.setattr(storage, "copy_verified", copied_meanwhile_by_another_process)
    assert materialize(local_store, manifest, destination) == destination
    assert sha256_file(destination / "model.safetensors") == sha256_file(model_folder / "model.safetensors")
    assert [p.name for p in destination.parent.iterdir()] == [manifest.artifact_id], "no copy left behind"

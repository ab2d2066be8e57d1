"""A node's copies of artifacts that no longer exist (superseded checkpoints, purged versions) stayed on its
disk for good; the node agent now deletes them (``portfolio.registry.cache_eviction``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from portfolio.registry import cache_eviction
from portfolio.registry.models import Artifact
from serving import agent_loop

pytestmark = pytest.mark.django_db

KEPT, DELETED, YOUNG = "a" * 64, "b" * 64, "c" * 64
OLD = time.time() - 2 * cache_eviction.KEEP_SECONDS


def copy(root, name, *, made=OLD, under=""):
    folder = root / under / name if under else root / name
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "model.safetensors").write_bytes(b"weights")
    os.utime(folder, (made, made))
    return folder


@pytest.fixture
def cache(tmp_path):
    Artifact.objects.create(id=KEPT, store_uri="store", size_bytes=7, file_count=1, files=[])
    return tmp_path / "artifacts"


def test_copies_of_deleted_artifacts_are_deleted_and_recorded_ones_kept(cache):
    kept, deleted = copy(cache, KEPT), copy(cache, DELETED)
    tokenizer = copy(cache, DELETED, under="tokenizers")
    other = cache / "not-an-artifact"
    other.mkdir()
    os.utime(other, (OLD, OLD))
    assert sorted(cache_eviction.evict_deleted(cache)) == sorted([deleted, tokenizer])
    assert kept.is_dir() and other.is_dir()
    assert not deleted.exists() and not tokenizer.exists()
    assert not list(cache.glob(".*")), "nothing is left half-deleted"


def test_a_young_copy_and_one_an_engine_was_started_from_are_kept(cache):
    young = copy(cache, YOUNG, made=time.time())
    served = copy(cache, DELETED)
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--model", str(served)])
    try:
        assert cache_eviction.evict_deleted(cache) == []
    finally:
        engine.kill()
        engine.wait(timeout=10)
    assert young.is_dir() and served.is_dir()
    assert cache_eviction.evict_deleted(cache) == [served]


def test_the_node_agent_loop_runs_the_eviction():
    assert cache_eviction.evict_due in agent_loop.PASS_HOOKS

"""Copies of deleted artifacts were deleted only by node agents: the web server (a dataset's rows, downloads)
and the control workers (merges, eval runs, ingests' tokenizers) copy artifacts into caches of their own, which
grew for good. Every copy made now clears the cache's copies of deleted artifacts, at most hourly per process."""

from __future__ import annotations

import pytest
from django.conf import settings

from portfolio.registry import cache_eviction
from tests.registry.test_cache_eviction import DELETED, copy
from training import services

pytestmark = pytest.mark.django_db


def test_reading_a_datasets_files_clears_copies_of_deleted_artifacts(dataset_version, monkeypatch):
    cache = settings.ARTIFACT_CACHE
    gone = copy(cache, DELETED)
    monkeypatch.setattr(cache_eviction, "_last_pass", 0.0)  # none yet in this process

    files = services.dataset_files(dataset_version)

    assert files.train.exists()
    assert not gone.exists()


def test_a_failed_pass_does_not_fail_the_copy_made_before_it(dataset_version, monkeypatch, caplog):
    """Found by review: the pass runs after the copy is made, and its error (a copy another process evicted
    meanwhile) failed the read (a merge, a trainer's start, a dataset page) whose copy was fine."""

    def failing() -> None:
        raise FileNotFoundError("a copy gone meanwhile")

    monkeypatch.setattr(cache_eviction, "evict_due", failing)
    assert services.dataset_files(dataset_version).train.exists()
    assert "the pass after a copy failed" in caplog.text


def test_a_copy_gone_between_its_listing_and_its_age_is_passed_over(monkeypatch, tmp_path):
    gone = copy(tmp_path, DELETED)
    real = cache_eviction._copies
    monkeypatch.setattr(cache_eviction, "_copies", lambda root: [*real(root), root / ("d" * 64)])
    assert cache_eviction.evict_deleted(tmp_path) == [gone]

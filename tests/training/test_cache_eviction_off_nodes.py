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

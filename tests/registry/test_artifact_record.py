"""``Artifact.objects.record``: one row per set of files, whoever stores them first."""

from __future__ import annotations

import pytest

from portfolio.registry.choices import Health
from portfolio.registry.hashing import FileEntry, Manifest
from portfolio.registry.models import Artifact

pytestmark = pytest.mark.django_db

MANIFEST = Manifest.of(
    [FileEntry("config.json", 12, "a" * 64), FileEntry("model.safetensors", 900, "b" * 64)]
)


def test_a_new_artifact_lists_its_files_and_is_healthy_when_verified():
    artifact = Artifact.objects.record(MANIFEST, "file:///store/x")
    artifact.refresh_from_db()
    assert artifact.pk == MANIFEST.artifact_id
    assert (artifact.store_uri, artifact.size_bytes, artifact.file_count) == ("file:///store/x", 912, 2)
    assert artifact.files == [
        {"path": "config.json", "size": 12, "sha256": "a" * 64},
        {"path": "model.safetensors", "size": 900, "sha256": "b" * 64},
    ]
    assert artifact.health == Health.OK
    assert artifact.verified_at is not None
    assert artifact.manifest() == MANIFEST


def test_an_unverified_artifact_keeps_an_unknown_health():
    artifact = Artifact.objects.record(MANIFEST, "file:///store/x", verified=False)
    assert (artifact.health, artifact.verified_at) == (Health.UNKNOWN, None)


def test_the_same_files_recorded_twice_are_one_row_as_first_recorded():
    first = Artifact.objects.record(MANIFEST, "file:///store/x", verified=False)
    again = Artifact.objects.record(MANIFEST, "s3://elsewhere/x")
    assert again.pk == first.pk
    assert Artifact.objects.count() == 1
    assert (again.store_uri, again.health) == ("file:///store/x", Health.UNKNOWN)

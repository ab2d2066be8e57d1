"""A purge leaves nothing of the purged files behind: blobs a failed delete kept are deleted by the next sweep
(they had no ``PendingWrite`` row, so nothing ever retried), this machine's copy of them in the artifact cache
goes at once (the periodic eviction keeps a copy for an hour, and runs only where copies are made), and so
does the conversion of the GGUF a purged version came from, unless another version still holds that GGUF."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from portfolio.registry import derived_versions, pending_writes, services
from portfolio.registry.artifacts import materialize_version
from portfolio.registry.choices import Source
from portfolio.registry.hashing import sha256_file
from portfolio.registry.importers import conversion_entry
from portfolio.registry.models import Artifact, ModelVersion, PendingWrite
from portfolio.registry.storage import LocalStore
from portfolio.registry.stores import default_store
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_model_folder
from tests.training.conftest import jsonl, tickets, upload
from training import dataset_purge
from training import services as training
from training.choices import DatasetKind

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


@pytest.fixture
def engineer(org):
    return actor_for(org["engineer"])


@pytest.fixture
def two(engineer, team, settings) -> list[ModelVersion]:
    """v1 and v2, imported here: different weights, the same config, tokenizer config and README."""
    model = services.create_model(actor=engineer, name="router", owner_team=team)
    root = settings.IMPORT_ROOTS[0]
    return [
        import_here(engineer, model, Source.LOCAL, str(make_model_folder(root / n, hidden=h)))
        for n, h in (("tiny", 8), ("wider", 16))
    ]


def _blobs(artifact: Artifact) -> dict[str, str]:
    return {entry["path"]: entry["sha256"] for entry in artifact.files}


def _purge(engineer, version: ModelVersion, capture) -> None:
    version = services.archive_version(actor=engineer, version=version)
    with capture(execute=True):
        services.purge_version(actor=engineer, version=version)


def test_blobs_a_failed_delete_kept_are_deleted_by_the_next_sweep_and_shared_ones_stay(
    engineer, two, monkeypatch, django_capture_on_commit_callbacks
):
    v1, v2 = two
    artifact = v1.artifact
    own, shared = _blobs(artifact)["model.safetensors"], _blobs(artifact)["config.json"]
    store = default_store()
    delete_blob, failures = LocalStore.delete_blob, []

    def fails_once(self, digest):
        if not failures:
            failures.append(digest)
            raise OSError("the store is unreachable")
        return delete_blob(self, digest)

    monkeypatch.setattr(LocalStore, "delete_blob", fails_once)
    _purge(engineer, v1, django_capture_on_commit_callbacks)  # succeeds: the failure is logged

    assert failures == [own] and store.has_blob(own)
    assert not Artifact.objects.filter(pk=artifact.pk).exists()
    assert PendingWrite.objects.count() == 1, "what the failed delete kept is the sweep's"
    pending_writes.sweep(quiet_for=timedelta(0))
    assert not store.has_blob(own) and not (store.root / "manifests" / f"{artifact.pk}.json").exists()
    assert store.has_blob(shared), "a blob another version's artifact holds stays"
    assert all(store.has_blob(sha) for sha in _blobs(v2.artifact).values())
    assert not PendingWrite.objects.exists()


def test_a_purge_whose_deletes_succeed_leaves_no_row_for_the_sweep(
    engineer, two, django_capture_on_commit_callbacks
):
    own = _blobs(two[0].artifact)["model.safetensors"]
    _purge(engineer, two[0], django_capture_on_commit_callbacks)
    assert not default_store().has_blob(own) and not PendingWrite.objects.exists()


def test_this_machines_copy_of_a_purged_versions_files_is_deleted_at_once(
    engineer, two, settings, django_capture_on_commit_callbacks
):
    v1, v2 = two
    copies = [materialize_version(v) for v in (v1, v2)]
    assert copies[0] == Path(settings.ARTIFACT_CACHE) / v1.artifact_id and copies[0].is_dir()
    _purge(engineer, v1, django_capture_on_commit_callbacks)
    assert not copies[0].exists()
    assert copies[1].is_dir(), "another artifact's copy stays"
    assert not list(Path(settings.ARTIFACT_CACHE).glob("*evicting*"))


def test_the_web_hosts_copy_of_a_purged_datasets_rows_is_deleted_at_once(
    engineer, team, settings, django_capture_on_commit_callbacks
):
    dataset = training.create_dataset(actor=engineer, owner_team=team, name="tickets", kind=DatasetKind.CHAT)
    version, _ = upload(engineer, dataset, jsonl(*tickets(20)))
    copy = Path(settings.ARTIFACT_CACHE) / version.artifact_id
    # The rows page (and the API's rows and downloads) reads a copy made on the web host.
    assert training.split_rows(version, "train", training.PAGE_BYTES)[0]["row"] is not None
    assert copy.is_dir()
    version = dataset_purge.archive_version(actor=engineer, version=version)
    with django_capture_on_commit_callbacks(execute=True):
        dataset_purge.purge_version(actor=engineer, version=version)
    assert not copy.exists()


def test_a_ggufs_conversion_goes_with_the_last_version_that_holds_it(
    engineer, team, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.GGUF_CONVERSION_CACHE = tmp_path / "conversions"
    gguf = settings.IMPORT_ROOTS[0] / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in: its conversion is cached already, so it is never read")
    entry = conversion_entry(sha256_file(gguf))
    make_model_folder(entry)
    (entry / ".complete").touch()
    model = services.create_model(actor=engineer, name="tiny", owner_team=team)
    v1 = import_here(engineer, model, Source.GGUF, str(gguf))
    assert "original/tiny.gguf" in _blobs(v1.artifact), v1.status_detail
    # Its chat template changed: another artifact, holding the same GGUF.
    v2 = derived_versions.set_chat_template(actor=engineer, version=v1, chat_template="{{ messages }}!")
    assert v2.artifact_id != v1.artifact_id

    _purge(engineer, v1, django_capture_on_commit_callbacks)
    assert not Artifact.objects.filter(pk=v1.artifact_id).exists()
    assert (entry / ".complete").exists(), "v2 still holds the GGUF: an import of it reuses the conversion"

    _purge(engineer, v2, django_capture_on_commit_callbacks)
    assert not entry.exists()
    assert not any(settings.GGUF_CONVERSION_CACHE.iterdir()), "nothing half deleted is left"

"""An archived version's stored files can be deleted (they are billed every day while kept): by whoever may
archive it, only once archived and out of use, audited, after commit, keeping every file another artifact
holds; the storage meter then stops counting them."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden
from portfolio.registry import services, storage_meter
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.stores import default_store
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_model_folder

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


@pytest.fixture
def ready(org, team, settings) -> list[ModelVersion]:
    """router v1 and v2, imported here: different weights, the same config, tokenizer config and README
    (blobs both artifacts hold)."""
    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="router", owner_team=team)
    return [
        import_here(
            engineer, model, Source.LOCAL, str(make_model_folder(settings.IMPORT_ROOTS[0] / n, hidden=h))
        )
        for n, h in (("tiny", 8), ("wider", 16))
    ]


def _blobs(artifact: Artifact) -> dict[str, str]:
    return {entry["path"]: entry["sha256"] for entry in artifact.files}


def _archived(org, version: ModelVersion) -> ModelVersion:
    return services.archive_version(actor=actor_for(org["engineer"]), version=version)


def test_a_ready_version_is_refused_archive_it_first(org, ready):
    v1 = ready[0]
    with pytest.raises(Conflict, match="archive it first"):
        services.purge_version(actor=actor_for(org["engineer"]), version=v1)
    v1.refresh_from_db()
    assert v1.artifact is not None
    assert all(default_store().has_blob(sha) for sha in _blobs(v1.artifact).values())


def test_a_viewer_cannot_purge(org, ready):
    v1 = _archived(org, ready[0])
    with pytest.raises(Forbidden):
        services.purge_version(actor=actor_for(org["viewer"]), version=v1)
    assert ModelVersion.objects.get(pk=v1.pk).artifact_id is not None


def test_purging_deletes_the_files_keeps_shared_ones_audits_and_stops_the_charge(
    org, team, ready, settings, django_capture_on_commit_callbacks
):
    v1, v2 = ready
    artifact = v1.artifact
    own, shared = _blobs(artifact)["model.safetensors"], _blobs(artifact)["config.json"]
    assert _blobs(v2.artifact)["config.json"] == shared != own
    assert storage_meter.usage()[0][3] > v2.artifact.size_bytes, "both are charged before"
    v1 = _archived(org, v1)

    with django_capture_on_commit_callbacks(execute=True):
        purged = services.purge_version(actor=actor_for(org["engineer"]), version=v1)

    assert purged.artifact_id is None and ModelVersion.objects.get(pk=v1.pk).artifact_id is None
    assert purged.status == VersionStatus.ARCHIVED
    store = default_store()
    assert not store.has_blob(own) and not Artifact.objects.filter(pk=artifact.pk).exists()
    assert not (store.root / "manifests" / f"{artifact.pk}.json").exists()
    assert store.has_blob(shared), "a blob another version's artifact holds stays"
    assert all(store.has_blob(sha) for sha in _blobs(v2.artifact).values())
    event = AuditEvent.objects.get(action="model_version.purge", object_id=str(v1.pk))
    assert event.before["artifact"] == artifact.pk and event.after["artifact"] is None
    assert artifact.pk not in storage_meter.keepers()
    assert storage_meter.usage() == [
        (team.pk, team.department_id, settings.ARTIFACT_STORE, v2.artifact.size_bytes)
    ]


def test_files_another_version_refers_to_stay(org, team, settings, django_capture_on_commit_callbacks):
    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="twice", owner_team=team)
    folder = str(make_model_folder(settings.IMPORT_ROOTS[0] / "same"))
    v1, v2 = (import_here(engineer, model, Source.LOCAL, folder) for _ in range(2))
    assert v1.artifact_id == v2.artifact_id
    with django_capture_on_commit_callbacks(execute=True):
        services.purge_version(actor=engineer, version=_archived(org, v1))
    assert Artifact.objects.filter(pk=v2.artifact_id).exists()
    assert all(default_store().has_blob(sha) for sha in _blobs(v2.artifact).values())


def test_a_purge_undone_with_its_transaction_deletes_nothing(org, ready, django_capture_on_commit_callbacks):
    v1 = _archived(org, ready[0])
    artifact = v1.artifact
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.purge_version(actor=actor_for(org["engineer"]), version=v1)
        raise RuntimeError("the caller's transaction fails after the purge")
    assert ModelVersion.objects.get(pk=v1.pk).artifact_id == artifact.pk
    assert all(default_store().has_blob(sha) for sha in _blobs(artifact).values())


def test_a_base_an_adapter_still_needs_is_refused(org, ready):
    v1 = _archived(org, ready[0])
    # Taken up since it was archived (as a race would): the adapter serves on the base's files.
    ModelVersion.objects.create(
        model=v1.model, number=9, kind=VersionKind.ADAPTER, base_version=v1, source=Source.UPLOAD,
        status=VersionStatus.READY,
    )  # fmt: skip
    with pytest.raises(Conflict, match="adapters built on it are not archived"):
        services.purge_version(actor=actor_for(org["engineer"]), version=v1)
    assert ModelVersion.objects.get(pk=v1.pk).artifact_id is not None


def test_a_failed_adapter_neither_blocks_archiving_nor_purging_its_base(org, ready):
    """A failed import holds no files and needs nothing of its base; it blocked the base for good, one of
    another team's (on a base shared with it), which its owners can neither see nor archive, too."""
    ModelVersion.objects.create(
        model=ready[0].model, number=9, kind=VersionKind.ADAPTER, base_version=ready[0], source=Source.UPLOAD,
        status=VersionStatus.FAILED,
    )  # fmt: skip
    v1 = _archived(org, ready[0])
    services.purge_version(actor=actor_for(org["engineer"]), version=v1)
    assert ModelVersion.objects.get(pk=v1.pk).artifact_id is None


def test_a_version_purged_while_its_files_are_checked_is_a_conflict_not_a_500(
    org, ready, monkeypatch, django_capture_on_commit_callbacks
):
    """A verify re-hashes every file (minutes for a large model); a purge that committed meanwhile deleted the
    artifact's row, and recording the health found failed with DoesNotExist: a 500 on the verify button."""
    from portfolio.registry import artifacts

    v1 = _archived(org, ready[0])
    real = artifacts.verify

    def verify_while_purged(store, manifest):
        found = real(store, manifest)
        with django_capture_on_commit_callbacks(execute=True):
            services.purge_version(actor=actor_for(org["engineer"]), version=v1)
        return found

    monkeypatch.setattr(artifacts, "verify", verify_while_purged)
    with pytest.raises(Conflict, match="deleted while they were checked"):
        artifacts.verify_on_request(v1.artifact_id, actor=actor_for(org["engineer"]))
    artifacts.mark_artifact_health(
        v1.artifact_id, ["gone"]
    )  # the periodic verifier's path: nothing to record


def test_the_api_purges_an_archived_version_and_refuses_a_ready_one(client, org, ready):
    client.force_login(org["engineer"])
    assert client.post("/api/v1/models/router/versions/2/purge").status_code == 409
    _archived(org, ready[0])
    response = client.post("/api/v1/models/router/versions/1/purge")
    assert response.status_code == 200, response.content
    assert response.json()["artifact_id"] is None and response.json()["status"] == "archived"
    client.force_login(org["viewer"])
    assert client.post("/api/v1/models/router/versions/1/purge").status_code == 403


def test_the_button_on_an_archived_versions_page_deletes_its_files(signed_in, org, ready):
    _archived(org, ready[0])
    page = reverse("version-detail", args=["router", 1])
    button = reverse("version-purge", args=["router", 1])
    assert button not in signed_in(org["viewer"]).get(page).content.decode()
    assert signed_in(org["viewer"]).post(button).status_code == 403
    assert (
        button
        not in signed_in(org["engineer"]).get(reverse("version-detail", args=["router", 2])).content.decode()
    )
    client = signed_in(org["engineer"])
    shown = client.get(page).content.decode()
    assert (
        button in shown
        and "Delete stored files" in shown
        and "/api/v1/models/router/versions/1/files/" in shown
    )

    text = client.post(button, follow=True).content.decode()

    assert "stored files were deleted" in text and "by engineer" in text
    assert "Delete stored files" not in text and "/api/v1/models/router/versions/1/files/" not in text
    assert ModelVersion.objects.get(pk=ready[0].pk).artifact_id is None

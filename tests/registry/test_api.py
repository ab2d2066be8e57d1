"""Registry REST endpoints: same gate, imports queued, files downloadable and verified."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.urls import reverse

from portfolio.registry import services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import Model, ModelVersion
from portfolio.registry.stores import default_store
from portfolio.registry.tasks import import_version
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_adapter_folder, make_model_folder

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


@pytest.fixture
def ready(org, team, settings):
    model = services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    return import_here(actor_for(org["engineer"]), model, Source.LOCAL, str(folder))


def test_an_engineer_registers_a_model_and_queues_an_import(
    client, org, team, settings, django_capture_on_commit_callbacks
):
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/models",
        {"name": "summarizer", "owner_team_id": team.pk, "task": "summarization"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "s")
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            "/api/v1/models/summarizer/imports",
            {"source": "local", "ref": str(folder)},
            content_type="application/json",
        )
    assert response.status_code == 202 and response.json()["status"] == "importing"
    assert len(callbacks) == 1, "the import task is enqueued once, on commit"


def test_a_card_given_with_an_import_is_bounded_as_a_read_readme_is(client, org, ready, settings):
    from portfolio.errors import Invalid
    from portfolio.registry import services
    from portfolio.registry.models import Model

    client.force_login(org["engineer"])
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "carded")
    body = {"source": "local", "ref": str(folder), "model_card": "x" * (services.MAX_MODEL_CARD_CHARS + 1)}
    response = client.post("/api/v1/models/router/imports", body, content_type="application/json")
    assert response.status_code == 422 and "model_card" in response.json()["error"]["fields"], (
        response.content
    )
    with pytest.raises(Invalid, match="model_card: at most"):
        services.start_import(
            actor=actor_for(org["engineer"]),
            model=Model.objects.get(name="router"),
            source=Source.LOCAL,
            ref=str(folder),
            model_card=body["model_card"],
            enqueue=False,
        )


def test_an_import_outside_the_roots_answers_400_with_the_reason(client, org, ready):
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/models/router/imports", {"source": "local", "ref": "/etc"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "outside the import folders" in response.json()["error"]["message"]


def test_files_download_verified_and_a_corrupted_one_is_refused(client, org, ready):
    client.force_login(org["viewer"])
    response = client.get("/api/v1/models/router/versions/1/files/config.json")
    assert response.status_code == 200
    assert b"LlamaForCausalLM" in b"".join(response.streaming_content)
    assert client.get("/api/v1/models/router/versions/1/files/../secret").status_code == 404


def test_a_model_shared_with_the_organisation_is_downloadable_by_the_teams_it_is_shared_with(
    client, org, ready
):
    """Its page shows every viewer the download links; the route refused all but the owner team (403)."""
    from portfolio.registry.choices import Visibility

    Model.objects.filter(pk=ready.model_id).update(visibility=Visibility.ORGANISATION)
    client.force_login(org["outsider"])
    response = client.get("/api/v1/models/router/versions/1/files/config.json")
    assert response.status_code == 200, response.content
    assert b"LlamaForCausalLM" in b"".join(response.streaming_content)
    Model.objects.filter(pk=ready.model_id).update(visibility=Visibility.TEAM)
    assert client.get("/api/v1/models/router/versions/1/files/config.json").status_code == 404


def test_verify_marks_a_corrupted_version_unhealthy_naming_the_file(client, org, ready):
    store = default_store()
    entry = ready.artifact.manifest().get("config.json")
    blob = store.blob_path(entry.sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"{}")
    client.force_login(org["engineer"])
    response = client.post("/api/v1/models/router/versions/1/verify")
    assert response.status_code == 200 and response.json()["health"] == "corrupt"
    ready.artifact.refresh_from_db()
    assert "config.json" in ready.artifact.health_detail


def test_importing_the_same_files_again_repairs_a_damaged_version(client, org, ready, settings):
    """The damaged version's page says "verify it and import it again"; the import found each blob already
    stored and did not write it, recorded the new version on the same damaged artifact, and called it ready."""
    import hashlib

    from portfolio.registry.choices import VersionStatus

    store = default_store()
    entry = ready.artifact.manifest().get("config.json")
    blob = store.blob_path(entry.sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"{}")
    client.force_login(org["engineer"])
    assert client.post("/api/v1/models/router/versions/1/verify").json()["health"] == "corrupt"
    again = import_here(
        actor_for(org["engineer"]), ready.model, Source.LOCAL, str(settings.IMPORT_ROOTS[0] / "tiny")
    )
    assert again.status == VersionStatus.READY and again.artifact_id == ready.artifact_id
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == entry.sha256
    ready.artifact.refresh_from_db()
    assert ready.artifact.health == "ok", ready.artifact.health_detail


def test_a_second_verify_of_the_same_files_while_one_runs_is_told_to_wait_not_run(
    client, org, ready, monkeypatch
):
    """Each verify re-hashes every stored file (up to the import limit) in its request: many at once on one
    large version would tie up the web workers and the disk for minutes each."""
    from portfolio.leases import Lease
    from portfolio.registry import artifacts

    hashed = []
    monkeypatch.setattr(artifacts, "verify", lambda store, manifest: hashed.append(1) or [])
    running = Lease(f"registry.verify:{ready.artifact_id}")
    assert running.acquire(wait=False)
    client.force_login(org["engineer"])
    try:
        response = client.post("/api/v1/models/router/versions/1/verify")
        assert response.status_code == 409 and "being checked already" in response.json()["error"]["message"]
        page = client.post(reverse("version-verify", args=["router", 1]), follow=True)
        assert b"being checked already" in page.content
        assert hashed == []
    finally:
        running.release()
    assert client.post("/api/v1/models/router/versions/1/verify").status_code == 200 and hashed == [1]


def test_a_models_license_and_description_are_bounded_not_a_500(client, org, team, ready):
    client.force_login(org["engineer"])
    new = {"name": "summarizer", "owner_team_id": team.pk, "license": "x" * 101}
    response = client.post("/api/v1/models", new, content_type="application/json")
    assert (
        response.status_code == 400
        and "license: at most 100 characters" in response.json()["error"]["message"]
    )
    patch = {"task": "chat", "visibility": "team", "description": "x" * 5001}
    response = client.put("/api/v1/models/router", patch, content_type="application/json")
    assert response.status_code == 400 and "description: at most 5000" in response.json()["error"]["message"]
    assert not Model.objects.filter(name="summarizer").exists()


def test_an_adapter_zip_uploads_through_the_api(client, org, ready, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in make_adapter_folder(tmp_path / "ad").iterdir():
            archive.write(path, path.name)
    client.force_login(org["engineer"])
    upload = io.BytesIO(buffer.getvalue())
    upload.name = "adapter.zip"
    response = client.post("/api/v1/models/router/uploads", {"base_version_id": ready.pk, "file": upload})
    assert response.status_code == 202, response.content
    version = ModelVersion.objects.get(pk=response.json()["id"])
    import_version(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY and version.base_version == ready


def test_another_teams_version_id_is_refused_as_one_that_does_not_exist(
    client, org, other_team, ready, tmp_path
):
    """A 400 for an id that names nothing and a 404 for one of another team's versions told an outsider
    which ids exist: both are now the same refusal."""
    services.create_model(actor=actor_for(org["outsider"]), name="theirs", owner_team=other_team)
    client.force_login(org["outsider"])
    answers = []
    for version_id in (ready.pk, 10**9):
        body = {"source": "local", "ref": str(tmp_path), "base_version_id": version_id}
        response = client.post("/api/v1/models/theirs/imports", body, content_type="application/json")
        upload = io.BytesIO(b"PK")
        upload.name = "adapter.zip"
        uploaded = client.post(
            "/api/v1/models/theirs/uploads", {"base_version_id": version_id, "file": upload}
        )
        answers.append(
            (
                response.status_code,
                response.json()["error"]["message"],
                uploaded.status_code,
                uploaded.json()["error"]["message"],
            )
        )
    assert (
        answers[0]
        == answers[1]
        == (400, "base_version_id: No such version.", 400, "base_version_id: No such version.")
    )


def test_promotion_and_lineage_and_compare(client, org, ready):
    client.force_login(org["owner"])
    assert client.post(
        "/api/v1/models/router/versions/1/promote", {"alias": "production"}, content_type="application/json"
    ).json()["aliases"] == {"production": 1}
    lineage = client.get("/api/v1/models/router/lineage").json()
    assert lineage["nodes"][0]["label"] == "router:v1"
    compare = client.get("/api/v1/models/router/compare?a=1&b=1").json()
    assert compare["fields"]["architecture"] == ["LlamaForCausalLM", "LlamaForCausalLM"]


def test_another_teams_model_is_404_for_an_outsider(client, org, ready):
    client.force_login(org["outsider"])
    assert client.get("/api/v1/models/router").status_code == 404
    assert client.get("/api/v1/models").json()["count"] == 0


def test_a_viewer_cannot_import(client, org, ready):
    client.force_login(org["viewer"])
    response = client.post(
        "/api/v1/models/router/imports", {"source": "hub", "ref": "a/b"}, content_type="application/json"
    )
    assert response.status_code == 403

"""Every change of an artifact's health is audited, either way, on every version that holds it (a model's
and a dataset's), in the change's transaction; a person's verify click is recorded as theirs, the
periodic verifier's finding as the system's."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.registry import artifacts, services
from portfolio.registry.choices import Health, Source
from portfolio.registry.stores import default_store
from tests.audit_transaction_world import World
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_model_folder

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]
DAMAGE = ["model.safetensors: sha256 differs"]


def rows(action: str) -> list[dict]:
    return list(
        AuditEvent.objects.filter(action=action)
        .order_by("sequence")
        .values("actor_kind", "actor_label", "actor_user_id", "object_id", "team_id", "before", "after")
    )


@pytest.fixture
def world(org, team, other_team) -> World:
    return World(org, team, other_team)


@pytest.fixture
def ready(org, team, settings):
    model = services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    return import_here(actor_for(org["engineer"]), model, Source.LOCAL, str(folder))


def test_a_model_version_found_intact_again_is_audited_as_the_verifier(world):
    base = world.base
    artifacts.mark_artifact_health(base.artifact_id, DAMAGE)
    artifacts.mark_artifact_health(base.artifact_id, [])
    base.artifact.refresh_from_db()
    assert base.artifact.health == Health.OK
    [healthy] = rows("model_version.healthy")
    assert (healthy["actor_kind"], healthy["actor_label"]) == ("system", "system:registry.verify")
    assert healthy["object_id"] == str(base.pk) and healthy["team_id"] == world.team.pk
    assert healthy["before"]["health"] == "corrupt" and healthy["after"]["health"] == "ok"
    [corrupt] = rows("model_version.corrupt")
    assert corrupt["before"]["health"] != "corrupt" and corrupt["after"]["problems"] == DAMAGE


def test_a_finding_that_changes_nothing_writes_no_row(world):
    base = world.base
    artifacts.mark_artifact_health(base.artifact_id, DAMAGE)
    before = AuditEvent.objects.count()
    artifacts.mark_artifact_health(base.artifact_id, ["model.safetensors: missing"])
    assert AuditEvent.objects.count() == before


def test_a_dataset_versions_files_found_corrupt_then_intact_are_audited_on_the_dataset_version(world):
    version = world.dataset_version
    artifacts.mark_artifact_health(version.artifact_id, ["train.jsonl: sha256 differs"])
    artifacts.mark_artifact_health(version.artifact_id, [])
    [corrupt] = rows("dataset_version.corrupt")
    [healthy] = rows("dataset_version.healthy")
    for row in (corrupt, healthy):
        assert row["object_id"] == str(version.pk) and row["team_id"] == world.team.pk
        assert row["actor_label"] == "system:registry.verify"
    assert corrupt["after"] == {
        "artifact": version.artifact_id,
        "health": "corrupt",
        "problems": ["train.jsonl: sha256 differs"],
    }
    assert (healthy["before"]["health"], healthy["after"]["health"]) == ("corrupt", "ok")
    assert rows("model_version.corrupt") == []  # no model version holds these files


def test_a_verify_click_and_a_verify_call_are_audited_as_the_person_who_asked(client, org, ready):
    store = default_store()
    entry = ready.artifact.manifest().get("config.json")
    blob = store.blob_path(entry.sha256)
    original = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(b"{}")
    client.force_login(org["engineer"])
    client.post(reverse("version-verify", args=["router", 1]))  # the version page's button
    [corrupt] = rows("model_version.corrupt")
    assert (corrupt["actor_kind"], corrupt["actor_user_id"]) == ("user", org["engineer"].pk)

    blob.write_bytes(original)
    client.force_login(org["owner"])
    assert client.post("/api/v1/models/router/versions/1/verify").json()["health"] == "ok"
    [healthy] = rows("model_version.healthy")
    assert (healthy["actor_kind"], healthy["actor_user_id"]) == ("user", org["owner"].pk)

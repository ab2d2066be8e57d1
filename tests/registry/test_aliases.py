"""Removing an alias: a version holding one could never be archived until another version was promoted to it.
Whoever may promote removes one; ``production``, which endpoints follow, only an owner, with a reason; audited
with what it pointed to."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.registry import aliases, services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import Artifact, Model, ModelVersion
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(org, team) -> Model:
    """Model ``router``: v1 is production, v2 staging."""
    model = services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    artifact = Artifact.objects.create(
        id="f" * 64, store_uri="file:///x", size_bytes=1, file_count=1, files=[]
    )
    for number, alias in ((1, "production"), (2, "staging")):
        version = ModelVersion.objects.create(
            model=model, number=number, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
        )
        services.promote(actor=actor_for(org["owner"]), version=version, alias=alias)
    return model


def names(model: Model) -> set[str]:
    return set(model.aliases.values_list("name", flat=True))


def last_removal() -> AuditEvent | None:
    return AuditEvent.objects.filter(action="model.alias_remove").order_by("-sequence").first()


def removal() -> AuditEvent:
    event = last_removal()
    assert event is not None
    return event


# --- The service -----------------------------------------------------------------------------------
def test_an_engineer_removes_an_alias_audited_with_the_version_it_pointed_to(org, model):
    removed = aliases.remove_alias(actor=actor_for(org["engineer"]), model=model, alias=" Staging ")
    assert removed.version.label == "router:v2"
    assert names(model) == {"production"}
    event = removal()
    assert (event.object_id, event.actor_label) == (str(model.pk), "engineer")
    assert event.before == {"alias": "staging", "version": "router:v2"}
    assert event.after == {"alias": "staging", "version": None}


def test_production_is_removed_by_an_owner_with_a_reason_only(org, model):
    with pytest.raises(Forbidden):
        aliases.remove_alias(actor=actor_for(org["engineer"]), model=model, alias="production", reason="old")
    with pytest.raises(Invalid, match="reason: say why production is removed") as refused:
        aliases.remove_alias(actor=actor_for(org["owner"]), model=model, alias="production", reason="  ")
    assert refused.value.fields == {"reason": ["Required to remove a guarded alias."]}
    assert names(model) == {"production", "staging"}
    aliases.remove_alias(actor=actor_for(org["owner"]), model=model, alias="production", reason="retired")
    assert names(model) == {"staging"}
    assert removal().before == {"alias": "production", "version": "router:v1"}
    assert removal().after == {"alias": "production", "version": None, "reason": "retired"}


def test_a_viewer_cannot_remove_an_alias_and_an_unknown_one_is_not_found(org, model):
    with pytest.raises(Forbidden):
        aliases.remove_alias(actor=actor_for(org["viewer"]), model=model, alias="staging")
    with pytest.raises(NotFound, match="router has no alias 'canary'"):
        aliases.remove_alias(actor=actor_for(org["engineer"]), model=model, alias="canary")
    with pytest.raises(Invalid, match="reason: at most 500"):
        aliases.remove_alias(actor=actor_for(org["engineer"]), model=model, alias="staging", reason="x" * 501)
    assert names(model) == {"production", "staging"} and last_removal() is None


def test_a_removal_whose_audit_row_fails_is_undone(org, model, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("the chain is unavailable")

    monkeypatch.setattr(AuditEvent, "save", refuse)
    with pytest.raises(RuntimeError):
        aliases.remove_alias(actor=actor_for(org["engineer"]), model=model, alias="staging")
    assert names(model) == {"production", "staging"}


def test_a_version_whose_alias_was_removed_can_be_archived(org, model):
    owner = actor_for(org["owner"])
    v1 = model.versions.get(number=1)
    with pytest.raises(Conflict, match="holds the alias production: move the alias first"):
        services.archive_version(actor=owner, version=v1)
    aliases.remove_alias(actor=owner, model=model, alias="production", reason="v1 retired")
    assert services.archive_version(actor=owner, version=v1).status == VersionStatus.ARCHIVED


# --- The API ---------------------------------------------------------------------------------------
URL = "/api/v1/models/router/aliases/{}"


def test_the_api_removes_an_alias_as_the_gate_says(client, org, model):
    client.force_login(org["viewer"])
    refused = client.delete(URL.format("staging"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    client.force_login(org["outsider"])
    assert client.delete(URL.format("staging")).status_code == 404
    client.force_login(org["engineer"])
    removed = client.delete(URL.format("staging"))
    assert removed.status_code == 200, removed.content
    assert removed.json()["aliases"] == {"production": 1}
    gone = client.delete(URL.format("staging"))
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "router has no alias 'staging'."
    assert client.delete(URL.format("production") + "?reason=old").status_code == 403
    client.force_login(org["owner"])
    unexplained = client.delete(URL.format("production"))
    assert unexplained.status_code == 400 and unexplained.json()["error"]["fields"] == {
        "reason": ["Required to remove a guarded alias."]
    }
    removed = client.delete(URL.format("production") + "?reason=replaced+by+an+endpoint+route")
    assert removed.status_code == 200 and removed.json()["aliases"] == {}
    assert removal().after == {
        "alias": "production",
        "version": None,
        "reason": "replaced by an endpoint route",
    }


def test_the_api_refuses_an_over_long_reason(client, org, model):
    client.force_login(org["owner"])
    response = client.delete(URL.format("production") + "?reason=" + "x" * 501)
    assert response.status_code == 422 and names(model) == {"production", "staging"}


def test_archiving_after_removal_through_the_api(client, org, model):
    client.force_login(org["owner"])
    archive = "/api/v1/models/router/versions/2/archive"
    assert client.post(archive).status_code == 409
    assert client.delete(URL.format("staging")).status_code == 200
    assert client.post(archive).json()["status"] == "archived"


# --- The pages -------------------------------------------------------------------------------------
def remove_url(alias: str) -> str:
    return reverse("alias-remove", args=["router", alias])


def test_the_pages_offer_removal_to_whoever_may_do_it(signed_in, org, model):
    version_page = reverse("version-detail", args=["router", 1])
    model_page = reverse("model-detail", args=["router"])
    for url in (version_page, model_page):
        as_owner = signed_in(org["owner"]).get(url).content.decode()
        assert f'action="{remove_url("production")}"' in as_owner and 'name="reason"' in as_owner
        assert f'action="{remove_url("staging")}"' in as_owner and "csrfmiddlewaretoken" in as_owner
        assert 'data-confirm="Remove the alias production of router (now v1)?' in as_owner
        as_engineer = signed_in(org["engineer"]).get(url).content.decode()
        assert f'action="{remove_url("staging")}"' in as_engineer
        assert f'action="{remove_url("production")}"' not in as_engineer
        as_viewer = signed_in(org["viewer"]).get(url).content.decode()
        assert "alias-remove" not in as_viewer


def test_removing_through_the_page_says_so_and_goes_back(signed_in, org, model):
    client = signed_in(org["engineer"])
    response = client.post(remove_url("staging"), {"version": "1"})
    assert response.status_code == 302 and response["Location"] == reverse(
        "version-detail", args=["router", 1]
    )
    assert "staging removed: it pointed to router:v2." in client.get(response["Location"]).content.decode()
    assert client.post(remove_url("production"), {"reason": "old"}).status_code == 403
    assert signed_in(org["viewer"]).post(remove_url("production")).status_code == 403
    assert names(model) == {"production"}


def test_an_owner_removing_production_without_a_reason_is_told_why(signed_in, org, model):
    client = signed_in(org["owner"])
    response = client.post(remove_url("production"), follow=True)
    assert "reason: say why production is removed" in response.content.decode()
    assert names(model) == {"production", "staging"}
    response = client.post(remove_url("production"), {"reason": "moved to an endpoint"})
    assert response.status_code == 302 and response["Location"] == reverse("model-detail", args=["router"])
    assert names(model) == {"staging"}
    assert client.post(remove_url("production"), {"reason": "again"}).status_code == 404

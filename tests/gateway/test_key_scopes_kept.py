"""A key's scopes naming an endpoint the team may no longer call (unshared or deleted since) have no box on
the edit page: saved for any other reason, the form sent none, and a key restricted to that endpoint became
a key for every endpoint of the team. Also the usage page's key filter and an endpoint's JSON settings on
numbers Python refuses to read (a 500 each)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from serving import services as serving
from serving.gateway import keystate
from serving.gateway import services as keys
from serving.models import Endpoint
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gateway_processes(monkeypatch):
    monkeypatch.setattr(keystate, "mark_revoked", lambda key_id: None)
    monkeypatch.setattr(keystate, "invalidate", lambda key_id: None)


def test_a_scope_no_longer_callable_is_kept_not_turned_into_every_endpoint(signed_in, org, team, other_team):
    Endpoint.objects.create(name="support-bot", owner_team=team)
    theirs = Endpoint.objects.create(name="clause-finder", owner_team=other_team)
    serving.share_endpoint(actor=actor_for(org["admin"]), endpoint=theirs, team=team)
    key, _ = keys.create_key(actor=actor_for(org["owner"]), team=team, name="k", scopes=["clause-finder"])
    serving.unshare_endpoint(actor=actor_for(org["admin"]), endpoint=theirs, team=team)
    client = signed_in(org["owner"])
    page = client.get(reverse("apikey-edit", args=[key.pk])).content.decode()
    assert 'data-testid="stale-scopes"' in page and "clause-finder" in page
    response = client.post(reverse("apikey-edit", args=[key.pk]), {"allowed_ips": "10.0.0.0/8"})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.scopes == ["clause-finder"] and key.allowed_ips == ["10.0.0.0/8"]


def test_a_key_filter_of_a_superscript_digit_is_no_server_error(signed_in, org):
    assert signed_in(org["owner"]).get(reverse("usage"), {"key": "²"}).status_code == 200


def test_an_endpoint_setting_with_a_number_too_long_to_read_is_a_form_error(signed_in, org, team):
    Endpoint.objects.create(name="voter", owner_team=team)
    config = '{"endpoint": "voter", "n": ' + "9" * 5000 + "}"
    response = signed_in(org["owner"]).post(
        reverse("endpoint-config", args=["voter"]), {"kind": "vote", "config": config}
    )
    assert response.status_code == 200 and "too long to read" in response.content.decode()

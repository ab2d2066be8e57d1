"""A lone surrogate (``"\\ud800"``) is valid JSON but no UTF-8 text: PostgreSQL's driver cannot send it, so
it is the caller's input to refuse (a 400 or 422 in the error shape), never a 500 with a traceback."""

from __future__ import annotations

import json

import pytest

from portfolio.registry import services as registry_services
from serving.models import Endpoint
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

LONE = "\ud800"


MODEL = {"task": "chat", "visibility": "team"}
# Where a string of the body reaches a query: a column written, a name looked up.
REQUESTS = [
    ("post", "/api/v1/models", {"name": "summarizer", "owner_team_id": "TEAM", "description": LONE}),
    ("post", "/api/v1/models", {"name": "summarizer", "owner_team_id": "TEAM", "tags": [LONE]}),
    ("put", "/api/v1/models/router", {**MODEL, "license": LONE}),
    ("put", "/api/v1/models/router", {**MODEL, "description": LONE}),
    ("post", "/api/v1/teams/TEAM/members", {"username": LONE, "role": "viewer"}),
    ("post", "/api/v1/endpoints", {"name": "ep", "team_id": "TEAM", "routes": [{"deployment": LONE}]}),
    ("put", "/api/v1/endpoints/smol-ep/routes", {"routes": [{"deployment": LONE}]}),
]


@pytest.fixture
def targets(org, team):
    registry_services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    Endpoint.objects.create(name="smol-ep", owner_team=team)
    return team


@pytest.mark.parametrize("method, url, body", REQUESTS)
def test_a_lone_surrogate_in_a_body_is_refused_in_the_error_shape_not_a_500(
    client, org, targets, caplog, method, url, body
):
    client.force_login(org["admin"])
    url = url.replace("TEAM", str(targets.pk))
    body = {key: targets.pk if value == "TEAM" else value for key, value in body.items()}
    # json.dumps escapes the surrogate ("\\ud800"), as a client's JSON library sends it.
    response = getattr(client, method)(url, json.dumps(body), content_type="application/json")
    assert response.status_code in (400, 422), response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["request_id"] == response["X-Request-ID"]
    assert not [r for r in caplog.records if r.exc_info], "no traceback logged for the caller's input"

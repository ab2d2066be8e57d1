"""The hostile tenant: the owner of another team, with a valid session and every id of ours it can guess.

Every route the permission matrix declares team-scoped answers them 404 with nothing of ours in the body;
no list carries our objects; and naming our objects inside a request body for their own team (a version to
serve, a deployment to route to, an endpoint to scope a key to, a dataset to train on) creates nothing and
leaks nothing. (tests/test_route_permissions.py checks each role's status per route; this suite checks what a
refusal gives away.)
"""

from __future__ import annotations

import json

import pytest
from django.db import transaction

from portfolio.registry.models import ModelVersion
from serving.gateway.models import ApiKey
from serving.models import Deployment, Endpoint
from tests.test_route_permissions import API_ROUTES, UI_ROUTES, _call, _fill, _ui_url
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


def _markers(world_values: dict, team) -> list[bytes]:
    """What a refusal must never carry: our team's and department's names and our objects' details."""
    version = ModelVersion.objects.get(pk=world_values["version_id"])
    return [
        m.encode()
        for m in (
            team.name,
            team.department.name,
            team.department.cost_center,
            version.artifact_id,
            "smol-ep",
            '"smol"',
            "router v1",
        )
    ]


def _leaks(body: bytes, markers: list[bytes]) -> list[str]:
    return [m.decode() for m in markers if m in body]


TEAM_API = sorted(op for op, rule in API_ROUTES.items() if rule.scope == "team" and "{" in op)
TEAM_UI = sorted(name for name, rule in UI_ROUTES.items() if rule.scope == "team")


@pytest.mark.parametrize("operation", TEAM_API)
def test_an_api_operation_on_our_objects_gives_another_team_a_bare_404(client, org, team, world, operation):
    rule = API_ROUTES[operation]
    with transaction.atomic():
        url = "/api/v1" + _fill(operation.split(" ", 1)[1], {**world, "token_id": 0})
        response = _call(client, "outsider", org, rule, url, world)
        transaction.set_rollback(True)
    assert response.status_code == 404, (operation, response.status_code, response.content[:300])
    error = json.loads(response.content)["error"]
    assert set(error) <= {"code", "message", "request_id"} and error["code"] == "not_found"
    assert not _leaks(response.content, _markers(world, team)), operation


@pytest.mark.parametrize("name", TEAM_UI)
def test_a_page_of_our_objects_gives_another_team_a_bare_404(client, org, team, world, name):
    rule = UI_ROUTES[name]
    with transaction.atomic():
        response = _call(client, "outsider", org, rule, _ui_url(name, world, None), world)
        transaction.set_rollback(True)
    assert response.status_code == 404, (name, response.status_code)
    assert not _leaks(response.content, _markers(world, team)), name


LISTS = [
    "/api/v1/models",
    "/api/v1/deployments",
    "/api/v1/endpoints",
    "/api/v1/datasets",
    "/api/v1/teams",
    "/api/v1/departments",
    "/api/v1/training/jobs",
    "/api/v1/training/evals",
    "/api/v1/usage",
    "/api/v1/nodes",
    "/api/v1/pools",
    "/models/",
    "/deployments/",
    "/endpoints/",
    "/pools/",
    "/training/",
    "/training/jobs/",
    "/training/evals/",
    "/keys/",
    "/usage/",
    "/teams/",
    "/",
]


def test_no_list_or_page_shows_another_team_our_objects(client, org, team, world):
    client.force_login(org["outsider"])
    markers = _markers(world, team)
    for url in LISTS:
        response = client.get(url)
        assert response.status_code == 200, (
            url,
            response.status_code,
        )  # a 404 would show nothing, proving nothing
        assert not _leaks(response.content, markers), url


def test_naming_our_objects_in_a_request_for_their_own_team_creates_nothing_and_tells_nothing(
    client, org, team, other_team, world
):
    """Each body names one of our objects by id or name for the outsider's own team. It is refused exactly as
    a request naming an object that does not exist: same status, same error, so the refusal is no oracle."""
    client.force_login(org["outsider"])

    def attempts(version_id, dataset_version_id, deployment, endpoint, team_id):
        return [
            (
                "/api/v1/deployments",
                {
                    "name": "stolen",
                    "team_id": other_team.pk,
                    "version_id": version_id,
                    "pool": "local-cpu",
                    "replicas": 0,
                },
            ),
            (
                "/api/v1/endpoints",
                {"name": "stolen-ep", "team_id": other_team.pk, "routes": [{"deployment": deployment}]},
            ),
            (
                "/api/v1/endpoints",
                {"name": "stolen-ep", "team_id": other_team.pk, "fallback": endpoint, "routes": []},
            ),
            (f"/api/v1/teams/{other_team.pk}/keys", {"name": "stolen key", "scopes": [endpoint]}),
            (
                "/api/v1/training/jobs",
                {
                    "base_version_id": version_id,
                    "pool": "local-cpu",
                    "dataset_version_id": dataset_version_id,
                },
            ),
            ("/api/v1/models", {"name": "stolen-model", "owner_team_id": team_id}),
            ("/api/v1/datasets", {"name": "stolen-set", "owner_team_id": team_id, "kind": "chat"}),
        ]

    ours = attempts(world["version_id"], world["dataset_version_id"], "smol", "smol-ep", team.pk)
    made_up = attempts(2**31 - 1, 2**31 - 2, "no-such-dep", "no-such-ep", 2**31 - 3)
    counts = (
        Deployment.objects.count(),
        Endpoint.objects.count(),
        ApiKey.objects.count(),
        FineTuneJob.objects.count(),
    )
    for (url, body), (_, fake) in zip(ours, made_up, strict=True):
        real = client.post(url, body, content_type="application/json")
        none = client.post(url, fake, content_type="application/json")
        assert 400 <= real.status_code < 500, (url, real.status_code, real.content[:300])
        assert real.status_code == none.status_code, (url, real.content[:300], none.content[:300])
        real_error, none_error = json.loads(real.content)["error"], json.loads(none.content)["error"]
        assert real_error["code"] == none_error["code"], url
        for name, fake_name in (("smol-ep", "no-such-ep"), ("smol", "no-such-dep")):
            real_error["message"] = real_error["message"].replace(name, fake_name)
        for number, fake_number in (
            (world["version_id"], 2**31 - 1),
            (world["dataset_version_id"], 2**31 - 2),
            (team.pk, 2**31 - 3),
        ):
            real_error["message"] = real_error["message"].replace(str(number), str(fake_number))
        assert real_error["message"] == none_error["message"], url
        assert not _leaks(real.content, _markers(world, team)[:4]), url
    assert (
        Deployment.objects.count(),
        Endpoint.objects.count(),
        ApiKey.objects.count(),
        FineTuneJob.objects.count(),
    ) == counts

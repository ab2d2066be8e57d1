"""Rollouts end to end in the database: starting one gives the candidate the canary share (one at a time,
bounded inputs, clear refusals), the beat task's step judges the usage since the start per route target
and promotes, holds or rolls back, an abort restores the weights; each step is audited with the route
change, and the endpoint page shows it all. Sticky A/B is set with the routes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings

from portfolio.audit.models import AuditEvent
from portfolio.registry import services as registry
from serving import rollouts, services
from serving.choices import PoolKind, RolloutState
from serving.gateway.models import UsageEvent
from serving.models import Endpoint, EndpointRoute, Rollout
from tests.conftest import actor_for
from tests.serving.nodes import add_node
from tests.serving.views.conftest import add_replica, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(org, team, other_team):
    """The team's endpoint ``support`` on ``support-bot`` (weight 100), and ``support-next`` to try."""
    from portfolio.registry.models import Artifact

    admin = actor_for(org["admin"])
    pool = services.create_pool(actor=admin, name="cpu-pool", kind=PoolKind.CPU)
    node = add_node(pool)
    artifact = Artifact.objects.create(
        id="a" * 64, store_uri="file:///a", size_bytes=1, file_count=1, files=[]
    )
    model = registry.create_model(actor=actor_for(org["engineer"]), name="smollm2", owner_team=team)
    for number, name in ((1, "support-bot"), (2, "support-next")):
        deployment = services.create_deployment(
            actor=admin,
            name=name,
            team=team,
            version=make_version(model, artifact, number=number),
            pool=pool,
            replicas=0,
        )
        add_replica(deployment, node, port=8100 + number)
    theirs = registry.create_model(actor=actor_for(org["outsider"]), name="theirs", owner_team=other_team)
    services.create_deployment(
        actor=admin,
        name="their-bot",
        team=other_team,
        version=make_version(theirs, artifact),
        pool=pool,
        replicas=0,
    )
    services.create_endpoint(actor=admin, name="support", team=team, routes=[{"deployment": "support-bot"}])
    return Endpoint.objects.get(name="support")


def weights(endpoint: Endpoint) -> dict[str, int]:
    return {r.deployment.name: r.weight for r in EndpointRoute.objects.filter(endpoint=endpoint)}


def start(client, org, **body):
    client.force_login(org["engineer"])
    return client.post(
        "/api/v1/endpoints/support/rollouts",
        {"deployment": "support-next", **body},
        content_type="application/json",
    )


def served(rollout: Rollout, deployment: str, count: int, *, status: int = 200, latency: int = 100, tag=""):
    """``count`` usage events of the endpoint answered by ``deployment`` as the rollout started."""
    at = rollout.started_at
    UsageEvent.objects.bulk_create(
        UsageEvent(
            event_id=f"{deployment}-{tag}{status}-{i}",
            at=at,
            endpoint="support",
            deployment=deployment,
            kind="chat",
            status=status,
            latency_ms=latency,
        )
        for i in range(count)
    )


def test_starting_a_rollout_gives_the_canary_its_share_audited(client, org, world):
    response = start(client, org, canary_percent=5, window_seconds=600)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "canary" and body["deployment"] == "support-next" and body["canary_percent"] == 5
    assert weights(world) == {"support-bot": 9500, "support-next": 500}
    rollout = Rollout.objects.get()
    assert abs((rollout.ends_at - rollout.started_at).total_seconds() - 600) < 1
    event = AuditEvent.objects.get(action="rollout.start")
    assert event.actor_label == "engineer" and event.object_id == str(rollout.pk)
    assert event.before["routes"] == [{"deployment": "support-bot", "adapter": None, "weight": 100}]
    assert event.after["rollout"]["candidate"] == "support-next"
    assert [s["kind"] for s in rollout.steps] == ["start"]


def test_one_rollout_at_a_time(client, org, world):
    assert start(client, org).status_code == 201
    again = start(client, org, deployment="support-bot")
    assert again.status_code == 409 and "under way" in again.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"deployment": "support-bot"}, 400, "already routes to support-bot"),
        ({"deployment": "nope"}, 400, "no deployment 'nope'"),
        ({"deployment": "their-bot"}, 400, "no deployment 'their-bot' visible to you"),
        ({"adapter": "tone"}, 400, "serves no adapter 'tone'"),
        ({"canary_percent": 0}, 422, "canary_percent"),
        ({"canary_percent": 51}, 422, "canary_percent"),
        ({"window_seconds": 30}, 422, "window_seconds"),
        ({"window_seconds": 86_401}, 422, "window_seconds"),
        ({"max_latency_ratio": 0.5}, 422, "max_latency_ratio"),
        ({"deployment": "x" * 64}, 422, "deployment"),
    ],
)
def test_bad_input_is_refused_clearly(client, org, world, body, status, words):
    response = start(client, org, **body)
    assert response.status_code == status, response.content
    assert words in response.content.decode()
    assert not Rollout.objects.exists() and weights(world) == {"support-bot": 100}


def test_a_canary_that_would_take_the_endpoint_past_its_most_routes_is_refused(client, org, world):
    """A rolled-back canary keeps its route at weight 0: canaries of ever new targets added routes past the
    most an endpoint may have (every route edit then refused), as a route edit may not."""
    from serving.models import Deployment
    from serving.services.route_kinds import MAX_ROUTES

    bot = Deployment.objects.get(name="support-bot")
    for number in range(MAX_ROUTES - 1):
        tried = Deployment.objects.create(
            name=f"tried-{number}", owner_team=bot.owner_team, version=bot.version, pool=bot.pool
        )
        EndpointRoute.objects.create(endpoint=world, deployment=tried, weight=0)
    response = start(client, org)
    assert response.status_code == 400, response.content
    assert f"{MAX_ROUTES} routes, the most an endpoint may have" in response.content.decode()
    assert not Rollout.objects.exists() and EndpointRoute.objects.filter(endpoint=world).count() == MAX_ROUTES


def test_a_healthy_canary_is_promoted_when_the_window_ends(client, org, world):
    start(client, org, min_requests=10)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 200)
    served(rollout, "support-next", 12)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=2)) == "hold"
    assert weights(world) == {"support-bot": 9500, "support-next": 500}
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == "promote"
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PROMOTED and rollout.finished_at is not None
    assert weights(world) == {"support-bot": 0, "support-next": 100}
    assert rollout.figures["canary"]["requests"] == 12 and rollout.figures["baseline"]["requests"] == 200
    event = AuditEvent.objects.get(action="rollout.promote")
    assert event.actor_label == "system:rollouts" and event.after["routes"][0]["deployment"] == "support-next"
    assert [s["kind"] for s in rollout.steps] == ["start", "promote"]
    assert rollouts.step(rollout.pk) is None, "a finished rollout is not stepped again"


def test_a_failing_canary_is_rolled_back_early_with_the_figures(client, org, world):
    start(client, org, min_requests=10)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 8)
    served(rollout, "support-next", 4, status=502)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "rollback"
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK
    assert "33.3%" in rollout.reason and "4 of 12" in rollout.reason
    assert weights(world) == {"support-bot": 100, "support-next": 0}
    event = AuditEvent.objects.get(action="rollout.rollback")
    assert "33.3%" in event.after["rollout"]["reason"]


def test_a_slow_canary_is_rolled_back(client, org, world):
    start(client, org, min_requests=5, max_latency_ratio=2)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 50, latency=100)
    served(rollout, "support-next", 10, latency=900)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "rollback"
    rollout.refresh_from_db()
    assert "900 ms" in rollout.reason and "9.00x" in rollout.reason


def test_the_beat_task_steps_every_active_rollout_and_holds_with_figures(client, org, world):
    assert settings.CELERY_BEAT_SCHEDULE["serving-step-rollouts"]["task"] == "serving.step_rollouts"
    from serving.tasks import step_rollouts

    start(client, org)
    rollout = Rollout.objects.get()
    served(rollout, "support-next", 3)
    assert step_rollouts() == {"hold": 1}
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.CANARY and rollout.figures["canary"]["requests"] == 3
    assert "3 of the 20" in rollout.figures["reason"]
    assert (
        not AuditEvent.objects.filter(action__startswith="rollout.").exclude(action="rollout.start").exists()
    )


def test_a_route_edit_that_takes_the_canary_away_aborts_the_rollout(client, org, world):
    start(client, org)
    rollout = Rollout.objects.get()
    services.set_routes(
        actor=actor_for(org["engineer"]),
        endpoint=world,
        routes=[{"deployment": "support-bot", "weight": 100}],
    )
    assert rollouts.step(rollout.pk) == "abort"
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ABORTED and "route edit" in rollout.reason
    assert weights(world) == {"support-bot": 100}


def test_abort_restores_the_weights_audited(client, org, world):
    start(client, org, canary_percent=20)
    assert weights(world) == {"support-bot": 8000, "support-next": 2000}
    response = client.post(
        "/api/v1/endpoints/support/rollouts/abort", {"reason": "wrong build"}, content_type="application/json"
    )
    assert response.status_code == 200 and response.json()["state"] == "aborted"
    assert response.json()["reason"] == "wrong build"
    assert weights(world) == {"support-bot": 100, "support-next": 0}
    assert AuditEvent.objects.filter(action="rollout.abort").count() == 1
    again = client.post("/api/v1/endpoints/support/rollouts/abort", {}, content_type="application/json")
    assert again.status_code == 409 and "no rollout under way" in again.json()["error"]["message"]
    listed = client.get("/api/v1/endpoints/support/rollouts").json()["items"]
    assert [r["state"] for r in listed] == ["aborted"]


def test_a_viewer_may_see_rollouts_but_not_start_or_abort_them(client, org, world):
    client.force_login(org["viewer"])
    assert client.get("/api/v1/endpoints/support/rollouts").status_code == 200
    refused = client.post(
        "/api/v1/endpoints/support/rollouts", {"deployment": "support-next"}, content_type="application/json"
    )
    assert refused.status_code == 403 and not Rollout.objects.exists()


def test_the_endpoint_page_shows_the_rollout_and_its_abort_button(client, org, world):
    client.force_login(org["engineer"])
    page = client.get("/endpoints/support/").content.decode()
    assert "Start rollout" in page and "support-next" in page
    response = client.post(
        "/endpoints/support/rollouts/",
        {
            "candidate": "support-next",
            "canary_percent": "10",
            "window_minutes": "15",
            "min_requests": "20",
            "max_error_points": "2",
            "max_latency_ratio": "1.5",
        },
    )
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    assert (rollout.canary_percent, rollout.window_seconds, rollout.max_error_rate_increase) == (
        10,
        900,
        0.02,
    )
    served(rollout, "support-next", 2)
    rollouts.step(rollout.pk)
    page = client.get("/endpoints/support/").content.decode()
    assert 'badge--warn">canary<' in page and "Abort rollout" in page and "10.0% of the calls" in page
    assert "2 of the 20 canary requests" in page
    client.force_login(org["viewer"])
    page = client.get("/endpoints/support/").content.decode()
    assert 'badge--warn">canary<' in page and "Abort rollout" not in page
    client.force_login(org["engineer"])
    assert client.post("/endpoints/support/rollouts/abort/").status_code == 302
    assert Rollout.objects.get().state == RolloutState.ABORTED


def test_a_bad_rollout_form_says_why(client, org, world):
    client.force_login(org["engineer"])
    response = client.post(
        "/endpoints/support/rollouts/", {"candidate": "support-next", "canary_percent": "90"}, follow=True
    )
    page = response.content.decode()
    assert "The rollout was not started" in page and "Canary share" in page
    assert not Rollout.objects.exists()


def test_sticky_assignment_is_set_with_the_routes_bounded(client, org, world):
    client.force_login(org["engineer"])
    url, routes = "/api/v1/endpoints/support/routes", [{"deployment": "support-bot"}]

    def put(**body):
        return client.put(url, {"routes": routes, **body}, content_type="application/json")

    for header in ("X User", "x:y", "", "a" * 65):
        response = put(sticky_by="header", sticky_header=header)
        assert response.status_code in (400, 422) and "sticky_header" in response.content.decode()
    refused = put(sticky_by="header", sticky_header="Authorization")
    assert refused.status_code == 400 and "credentials" in refused.json()["error"]["message"]
    assert put(sticky_by="sometimes").status_code == 422
    saved = put(sticky_by="header", sticky_header="X-User-Id").json()
    assert (saved["sticky_by"], saved["sticky_header"]) == ("header", "x-user-id")
    assert put().json()["sticky_by"] == "header", "omitted: unchanged"
    by_key = put(sticky_by="api_key", sticky_header="X-User-Id").json()
    assert (by_key["sticky_by"], by_key["sticky_header"]) == ("api_key", "")
    change = AuditEvent.objects.filter(action="endpoint.routes").order_by("-sequence").first()
    assert change.before["sticky_by"] == "header" and change.after["sticky_by"] == "api_key"
    assert Endpoint.objects.get(name="support").sticky_by == "api_key"


def test_the_gateways_routing_table_follows_the_rollout_and_the_sticky_setting(client, org, world):
    """The gateway reads routes from PostgreSQL at each refresh: what a rollout writes is what it routes by."""
    from serving.gateway.routing import _read_snapshot as build_snapshot

    def table() -> dict[str, int]:
        return {r.deployment: r.weight for r in build_snapshot().endpoints["support"].routes}

    start(client, org)
    rollout = Rollout.objects.get()
    assert table() == {"support-bot": 9500, "support-next": 500}
    served(rollout, "support-next", 25)
    rollouts.step(rollout.pk, now=rollout.ends_at)
    assert table() == {"support-bot": 0, "support-next": 100}
    Endpoint.objects.filter(pk=world.pk).update(sticky_by="header", sticky_header="x-user-id")
    info = build_snapshot().endpoints["support"]
    assert (info.sticky_by, info.sticky_header) == ("header", b"x-user-id")

"""An endpoint lists each target (a deployment's base model, or one of its adapters) once: rollouts key routes
by target, so a target listed twice took a canary's whole share, or kept a rolled-back canary's traffic. The
service, the API, the route editor and the database refuse a second row; the migration that adds the
constraint first merges the rows already there, their weights added up."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

from portfolio.errors import Invalid
from serving import services
from serving.models import Deployment, Endpoint, EndpointRoute
from tests.conftest import actor_for
from tests.serving.test_rollouts import weights
from tests.serving.test_rollouts import world as world  # noqa: F401  (the fixture)
from tests.serving.views.test_endpoints import routes_data

pytestmark = pytest.mark.django_db

TWICE = [{"deployment": "support-bot", "weight": 100}, {"deployment": "support-bot", "weight": 0}]


def test_a_target_listed_twice_is_refused_by_the_service_naming_the_second_route(org, team, world):
    engineer = actor_for(org["engineer"])
    with pytest.raises(Invalid, match=r"routes\[1\]: support-bot is listed already \(routes\[0\]\)"):
        services.set_routes(actor=engineer, endpoint=world, routes=TWICE)
    with pytest.raises(Invalid, match=r"routes\[1\]: support-bot is listed already"):
        services.create_endpoint(actor=engineer, name="support-2", team=team, routes=TWICE)
    assert weights(world) == {"support-bot": 100} and not Endpoint.objects.filter(name="support-2").exists()


def test_a_target_listed_twice_is_refused_by_the_api_in_its_error_shape(client, org, world):
    client.force_login(org["engineer"])
    response = client.put(
        "/api/v1/endpoints/support/routes", {"routes": TWICE}, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"].startswith(
        "routes[1]: support-bot is listed already"
    )
    assert weights(world) == {"support-bot": 100}


def test_a_target_listed_twice_is_refused_on_the_route_editor(signed_in, org, world):
    response = signed_in(org["engineer"]).post(
        reverse("endpoint-routes", args=[world.name]),
        routes_data(("support-bot", "", 100), ("support-next", "", 50), ("support-bot", "", 0)),
    )
    assert response.status_code == 200
    assert "support-bot is listed more than once" in response.content.decode()
    assert weights(world) == {"support-bot": 100}


def test_the_database_holds_one_row_per_target_even_one_without_an_adapter(world):
    """No adapter is a null: only ``nulls_distinct=False`` makes two such rows one target."""
    bot = Deployment.objects.get(name="support-bot")
    with pytest.raises(IntegrityError), transaction.atomic():
        EndpointRoute.objects.create(endpoint=world, deployment=bot, adapter=None, weight=0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("restores_latest_schema")
def test_the_migration_merges_a_targets_rows_into_one_with_their_weights_added_up(world):
    before, after = (
        [("serving", "0011_deployments_store_no_prompts")],
        [("serving", "0012_endpointroute_endpoint_route_once")],
    )
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    Route = executor.loader.project_state(before).apps.get_model("serving", "EndpointRoute")
    bot, following = Deployment.objects.get(name="support-bot"), Deployment.objects.get(name="support-next")
    first = Route.objects.get(endpoint_id=world.pk)
    Route.objects.create(endpoint_id=world.pk, deployment_id=bot.pk, weight=30)
    Route.objects.create(endpoint_id=world.pk, deployment_id=following.pk, weight=20)
    Route.objects.create(endpoint_id=world.pk, deployment_id=bot.pk, weight=0)

    MigrationExecutor(connection).migrate(after)
    rows = EndpointRoute.objects.filter(endpoint=world).order_by("id")
    assert [(r.pk, r.deployment.name, r.weight) for r in rows] == [
        (first.pk, "support-bot", 130),
        (rows[1].pk, "support-next", 20),
    ]

"""An endpoint with a rollout under way stays plain: a router, cascade or vote never calls its routes, so its
canary would go unwatched and the rollout's end would edit weights nothing uses. Making it composite is
refused until the rollout finishes or is aborted."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from serving import services
from serving.choices import RolloutState
from serving.models import Endpoint, Rollout
from tests.conftest import actor_for
from tests.serving.test_rollouts import start, weights
from tests.serving.test_rollouts import world as world  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.django_db

ROUTER = {
    "kind": "router",
    "config": {"classifier": "helper", "default": "helper", "routes": {"a": "helper"}},
}


def test_an_endpoint_with_a_rollout_under_way_is_not_made_composite(client, org, team, world):
    engineer = actor_for(org["engineer"])
    services.create_endpoint(actor=engineer, name="helper", team=team, routes=[{"deployment": "support-bot"}])
    assert start(client, org).status_code == 201
    with pytest.raises(Conflict, match="support has a rollout under way \\(a canary of support-next\\)"):
        services.configure_endpoint(actor=engineer, endpoint=world, **ROUTER)
    response = client.put("/api/v1/endpoints/support/config", ROUTER, content_type="application/json")
    assert response.status_code == 409 and "make it a router" in response.json()["error"]["message"]
    assert Endpoint.objects.get(pk=world.pk).kind == "plain"
    assert weights(world) == {"support-bot": 9500, "support-next": 500}

    services.abort_rollout(actor=engineer, endpoint=world)
    assert Rollout.objects.get().state == RolloutState.ABORTED
    assert services.configure_endpoint(actor=engineer, endpoint=world, **ROUTER).kind == "router"

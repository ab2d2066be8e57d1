"""Promotion drives traffic: moving ``production`` to a version starts a rollout of it on every endpoint that
served the previous production version; naming an endpoint starts one there (and a refusal there undoes the
promotion). What it did is said on the page, kept in the promotion's audit row and in the rollout's steps."""

from __future__ import annotations

import pytest

from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid
from portfolio.registry import services as registry
from portfolio.registry.models import Alias, ModelVersion
from serving import services
from serving.choices import RolloutState
from serving.models import Endpoint, Rollout
from tests.conftest import actor_for
from tests.serving.test_rollouts import weights
from tests.serving.test_rollouts import world as world  # noqa: F401 - the shared fixture
from tests.serving.views.conftest import make_version

pytestmark = pytest.mark.django_db


def versions() -> tuple[ModelVersion, ModelVersion]:
    found = ModelVersion.objects.filter(model__name="smollm2").order_by("number")
    return found.get(number=1), found.get(number=2)


def production() -> str:
    return Alias.objects.get(model__name="smollm2", name="production").version.label


def test_promoting_to_production_starts_a_rollout_where_the_previous_version_served(org, world):
    engineer = actor_for(org["engineer"])
    v1, v2 = versions()
    assert registry.promote(actor=engineer, version=v1, alias="production").followed == []
    done = registry.promote(actor=engineer, version=v2, alias="production")
    assert done.followed == ["Rollout of support-next started on support."]
    rollout = Rollout.objects.get(endpoint=world)
    assert rollout.state == RolloutState.CANARY and rollout.deployment == "support-next"
    assert weights(world) == {"support-bot": 9500, "support-next": 500}
    assert rollout.steps[0]["reason"].startswith(
        "On promotion of smollm2:v2 to production. Canary support-next"
    )
    promoted = AuditEvent.objects.filter(action="model.promote").order_by("-sequence").first()
    assert promoted.after["followed"] == done.followed
    assert AuditEvent.objects.filter(action="rollout.start", object_id=str(rollout.pk)).exists()


def test_naming_an_endpoint_starts_a_rollout_there_whatever_the_alias(org, world):
    _, v2 = versions()
    done = registry.promote(actor=actor_for(org["engineer"]), version=v2, alias="staging", endpoint="support")
    assert done.followed == ["Rollout of support-next started on support."]
    assert Rollout.objects.get().deployment == "support-next"


def test_a_refusal_on_the_named_endpoint_undoes_the_promotion(org, world):
    engineer = actor_for(org["engineer"])
    v1, _ = versions()
    v3 = make_version(v1.model, v1.artifact, number=3)
    registry.promote(actor=engineer, version=v1, alias="production")
    with pytest.raises(Invalid, match="not deployed"):
        registry.promote(actor=engineer, version=v3, alias="production", endpoint="support")
    with pytest.raises(Invalid, match="no endpoint 'their-support'"):
        registry.promote(actor=engineer, version=v3, alias="production", endpoint="their-support")
    assert production() == "smollm2:v1" and not Rollout.objects.exists()


def test_an_endpoint_that_cannot_start_one_keeps_its_routes_and_the_promotion_says_why(org, world):
    engineer, admin = actor_for(org["engineer"]), actor_for(org["admin"])
    v1, _ = versions()
    v3 = make_version(v1.model, v1.artifact, number=3)
    registry.promote(actor=engineer, version=v1, alias="production")
    undeployed = registry.promote(actor=engineer, version=v3, alias="production")
    assert undeployed.followed == ["support: no rollout, smollm2:v3 is not deployed for it."]
    assert weights(world) == {"support-bot": 100} and production() == "smollm2:v3"

    registry.promote(actor=engineer, version=v1, alias="production")
    services.create_deployment(
        actor=admin,
        name="support-third",
        team=world.owner_team,
        version=v3,
        pool=world.routes.get().deployment.pool,
        replicas=0,
    )
    services.start_rollout(actor=engineer, endpoint=world, deployment="support-next")
    busy = registry.promote(actor=engineer, version=v3, alias="production")
    assert len(busy.followed) == 1 and busy.followed[0].startswith(
        "support: no rollout, support has a rollout under way"
    )
    assert production() == "smollm2:v3" and Rollout.objects.get().deployment == "support-next"


def test_other_aliases_move_traffic_only_when_asked(org, world):
    engineer = actor_for(org["engineer"])
    v1, v2 = versions()
    registry.promote(actor=engineer, version=v1, alias="staging")
    assert registry.promote(actor=engineer, version=v2, alias="staging").followed == []
    assert not Rollout.objects.exists()


def test_the_version_page_promotes_with_an_endpoint_and_says_what_started(client, org, world):
    client.force_login(org["engineer"])
    response = client.post(
        "/models/smollm2/v2/promote/", {"alias": "production", "endpoint": "support"}, follow=True
    )
    page = response.content.decode()
    assert "production now points to smollm2:v2." in page
    assert "Rollout of support-next started on support." in page
    endpoint_page = client.get("/endpoints/support/").content.decode()
    assert "On promotion of smollm2:v2 to production." in endpoint_page


def test_the_api_promotes_with_an_endpoint_and_refuses_a_bad_one(client, org, world):
    client.force_login(org["engineer"])
    url = "/api/v1/models/smollm2/versions/2/promote"
    long = client.post(url, {"alias": "production", "endpoint": "x" * 64}, content_type="application/json")
    assert long.status_code == 422
    other = client.post(url, {"alias": "production", "endpoint": "nope"}, content_type="application/json")
    assert other.status_code == 400 and "no endpoint 'nope'" in other.json()["error"]["message"]
    assert not Alias.objects.filter(name="production").exists()
    ok = client.post(url, {"alias": "production", "endpoint": "support"}, content_type="application/json")
    assert ok.status_code == 200, ok.content
    assert ok.json()["aliases"] == {"production": 2}
    assert ok.json()["followed"] == ["Rollout of support-next started on support."]
    assert Endpoint.objects.get(name="support").rollouts.get().deployment == "support-next"


def test_moving_production_asks_first_and_keeps_the_endpoint_named(client, org, world):
    v1, _ = versions()
    registry.promote(actor=actor_for(org["engineer"]), version=v1, alias="production")
    client.force_login(org["engineer"])
    asked = client.post("/models/smollm2/v2/promote/", {"alias": "production", "endpoint": "support"})
    page = asked.content.decode()
    assert "Move production to v2" in page and 'name="endpoint" value="support"' in page
    assert not Rollout.objects.exists()
    client.post(
        "/models/smollm2/v2/promote/", {"alias": "production", "endpoint": "support", "confirm": "on"}
    )
    assert production() == "smollm2:v2" and Rollout.objects.get().deployment == "support-next"

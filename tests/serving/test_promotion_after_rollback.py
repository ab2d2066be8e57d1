"""A promotion to production whose rollout was rolled back leaves the alias on the rejected version while the
endpoint's traffic stays on the version before it: the next promotion still rolls out on that endpoint,
which serves another version of the model, though not the alias's previous holder."""

from __future__ import annotations

from datetime import timedelta

import pytest

from portfolio.registry import services as registry
from portfolio.registry.models import Alias, ModelVersion
from serving import rollouts, services
from serving.choices import RolloutState
from serving.models import Deployment, Rollout
from tests.conftest import actor_for
from tests.serving.test_rollouts import served, weights
from tests.serving.test_rollouts import world as world  # noqa: F401 - the shared fixture
from tests.serving.views.conftest import make_version

pytestmark = pytest.mark.django_db


def test_a_promotion_after_a_rolled_back_one_starts_a_rollout_where_an_older_version_serves(org, world):
    engineer, admin = actor_for(org["engineer"]), actor_for(org["admin"])
    found = ModelVersion.objects.filter(model__name="smollm2").order_by("number")
    v1, v2 = found.get(number=1), found.get(number=2)
    registry.promote(actor=engineer, version=v1, alias="production")
    registry.promote(actor=engineer, version=v2, alias="production")
    rejected = Rollout.objects.get()
    served(rejected, "support-next", 30, status=500)
    rollouts.step(rejected.pk, now=rejected.ends_at + timedelta(seconds=1))
    rejected.refresh_from_db()
    assert rejected.state == RolloutState.ROLLED_BACK
    assert Alias.objects.get(model__name="smollm2", name="production").version == v2
    assert weights(world) == {"support-bot": 100, "support-next": 0}

    v3 = make_version(v1.model, v1.artifact, number=3)
    pool = Deployment.objects.get(name="support-bot").pool
    services.create_deployment(
        actor=admin, name="support-third", team=world.owner_team, version=v3, pool=pool, replicas=0
    )
    done = registry.promote(actor=engineer, version=v3, alias="production")
    assert done.followed == ["Rollout of support-third started on support."]
    rollout = Rollout.objects.get(endpoint=world, state=RolloutState.CANARY)
    assert rollout.deployment == "support-third"
    assert weights(world) == {"support-bot": 9500, "support-next": 0, "support-third": 500}


def test_a_promotion_leaves_alone_an_endpoint_that_serves_another_model(org, world, team):
    engineer, admin = actor_for(org["engineer"]), actor_for(org["admin"])
    v1, v2 = ModelVersion.objects.filter(model__name="smollm2").order_by("number")[:2]
    other = registry.create_model(actor=engineer, name="other-model", owner_team=team)
    pool = Deployment.objects.get(name="support-bot").pool
    services.create_deployment(
        actor=admin,
        name="other-bot",
        team=team,
        version=make_version(other, v1.artifact, number=1),
        pool=pool,
        replicas=0,
    )
    services.create_endpoint(
        actor=engineer, name="elsewhere", team=team, routes=[{"deployment": "other-bot"}]
    )
    registry.promote(actor=engineer, version=v1, alias="production")
    done = registry.promote(actor=engineer, version=v2, alias="production")
    assert done.followed == ["Rollout of support-next started on support."]
    assert list(Rollout.objects.values_list("endpoint__name", flat=True)) == ["support"]

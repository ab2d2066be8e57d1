"""A canary adapter is healthy only where it is served: a replica that never loaded it (a failed load, its
files still copying, an older generation) makes the engine answer 404 for it, which the rollout counts as
errors, and a canary no ready replica has loaded is never promoted to all the traffic."""

from __future__ import annotations

from datetime import timedelta

import pytest

from portfolio.registry.choices import Source, VersionKind
from serving import rollouts
from serving.choices import RolloutState
from serving.gateway.models import UsageEvent
from serving.models import Deployment, DeploymentAdapter, Replica, Rollout
from tests.serving.conftest import hold_adapters
from tests.serving.test_rollouts import served
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name
from tests.serving.views.conftest import make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def tone(world):
    """The adapter ``support-tone`` served by ``support-bot`` (the baseline's deployment)."""
    bot = Deployment.objects.get(name="support-bot")
    version = make_version(
        bot.version.model,
        bot.version.artifact,
        number=9,
        kind=VersionKind.ADAPTER,
        base_version=bot.version,
        source=Source.FINE_TUNE,
        parameter_count=1_000_000,
        shape={},
    )
    return DeploymentAdapter.objects.create(deployment=bot, version=version, name="support-tone")


def start_canary(client, org, **body) -> Rollout:
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/endpoints/support/rollouts",
        {"deployment": "support-bot", "adapter": "support-tone", "min_requests": 20, **body},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    return Rollout.objects.get()


def weights(endpoint) -> dict[str, int]:
    """The route weights by adapter ("" for the base)."""
    return {r.adapter.name if r.adapter else "": r.weight for r in endpoint.routes.select_related("adapter")}


def loaded(*adapters: str) -> None:
    hold_adapters(Replica.objects.filter(deployment__name="support-bot"), *adapters)


def canary_answered(rollout: Rollout, count: int, *, status: int = 200, error: str = "") -> None:
    UsageEvent.objects.bulk_create(
        UsageEvent(
            event_id=f"tone-{status}-{i}",
            at=rollout.started_at,
            endpoint="support",
            deployment="support-bot",
            adapter="support-tone",
            kind="chat",
            status=status,
            error=error,
            latency_ms=100,
        )
        for i in range(count)
    )


def test_a_canary_adapter_that_never_loaded_is_rolled_back_not_promoted(client, org, world, tone):
    """Its replica is ready but never loaded it: every canary call was the engine's 404, and the step used to
    see 20 requests and no error, and promote it: every call to the endpoint then 404ed."""
    loaded()
    rollout = start_canary(client, org)
    served(rollout, "support-bot", 200)
    canary_answered(rollout, 20, status=404, error="upstream_error")
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == "rollback"
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK
    assert weights(world) == {"": 100, "support-tone": 0}


def test_the_engines_404_for_the_canary_counts_as_an_error(client, org, world, tone):
    """Loaded on one replica, missing on another (an older generation): the 404s are the canary failing."""
    loaded("support-tone")
    rollout = start_canary(client, org)
    served(rollout, "support-bot", 200)
    canary_answered(rollout, 20, status=404, error="upstream_error")
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "rollback"
    rollout.refresh_from_db()
    assert rollout.figures["canary"]["errors"] == 20 and "error rate 100.0%" in rollout.reason


@pytest.mark.parametrize(("adapters", "verdict"), [((), "rollback"), (("support-tone",), "promote")])
def test_a_canary_adapter_is_promoted_only_where_a_ready_replica_loaded_it(
    client, org, world, tone, adapters, verdict
):
    """Healthy while it was loaded, then its replica was replaced by one that has not loaded it (yet)."""
    loaded(*adapters)
    rollout = start_canary(client, org)
    served(rollout, "support-bot", 200)
    canary_answered(rollout, 20)
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == verdict
    after = {"": 0, "support-tone": 100} if verdict == "promote" else {"": 100, "support-tone": 0}
    assert weights(world) == after


def test_a_canary_adapter_held_at_another_version_is_not_promoted(client, org, world, tone):
    """Its replica loaded the name, but another version of it (removed and added again while a load was under
    way): the gateway routes the canary nowhere until the agent reloads it, so it is not promoted on that."""
    loaded("support-tone")
    Replica.objects.filter(deployment__name="support-bot").update(
        adapter_versions={"support-tone": tone.version_id + 1000}
    )
    rollout = start_canary(client, org)
    served(rollout, "support-bot", 200)
    canary_answered(rollout, 20)
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == "rollback"
    assert weights(world) == {"": 100, "support-tone": 0}

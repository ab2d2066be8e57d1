"""A router, cascade or vote endpoint scored on a task is its composition, not a route target: the portfolio
hint shows it without a size and blocks its canary, saying why (found by review: an endpoint made a cascade
keeps its earlier routes, and the hint's one action started a canary of one of them, which the cascade never
calls, sized as that route's model)."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from serving.models import Deployment, Endpoint, EndpointRoute, Rollout
from serving.services import composite
from tests.training.test_portfolio import finished, rows
from tests.training.test_portfolio import world as world  # noqa: PLC0414 - the fixture, used by name
from training.evals import comparability, portfolio

pytestmark = pytest.mark.django_db


@pytest.fixture
def smart(world, engineer) -> Endpoint:
    """A plain endpoint of the small deployment, then made a cascade of ``tuned`` and ``general``; scored
    as the cascade, better and cheaper than production."""
    smart = Endpoint.objects.create(name="smart", owner_team=world["task"].owner_team)
    EndpointRoute.objects.create(
        endpoint=smart, deployment=Deployment.objects.get(name="small-dep"), weight=100
    )
    smart = composite.configure_endpoint(
        actor=engineer,
        endpoint=smart,
        kind="cascade",
        config={"small": "tuned", "large": "general", "threshold": -1.0},
    )
    assert smart.routes.exists(), "the routes it had stay"
    run = finished(world["eval_set"], smart, quality=0.97, cost=0.01, p50=100.0)
    run.measured_routes = comparability.measured_now(smart.pk)
    run.save(update_fields=["measured_routes"])
    return smart


def test_a_composite_candidate_is_hinted_without_a_size_and_its_canary_is_blocked(world, smart):
    (row,) = rows()
    figures = next(c for c in row.candidates if c.endpoint == "smart")
    assert (figures.parameters, figures.target, figures.composite) == (None, None, "cascade")
    assert row.hint is not None and row.hint.candidate.endpoint == "smart"
    assert row.hint.blocked == (
        "smart is a cascade endpoint: make it the task's production endpoint, or roll out on the endpoints it calls."
    )


def test_one_action_starts_no_canary_of_a_composite_candidate(world, smart, engineer):
    with pytest.raises(Conflict, match="smart is a cascade endpoint"):
        portfolio.start_canary(actor=engineer, task=world["task"], candidate="smart")
    assert not Rollout.objects.exists()

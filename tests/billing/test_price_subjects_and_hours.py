"""What the price book lists and from when a new price counts: a reader learns only the subjects they may
see or that have a price; a price set without a start counts from the next hour, never over calls already
served at the old one."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from portfolio.billing import money, services, subjects
from portfolio.billing.charges import charges_of
from portfolio.billing.choices import LineKind, PriceKind
from serving.models import Endpoint
from tests.billing.conftest import LONG_AGO, price, tokens
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

SUBJECTS = "/api/v1/billing/prices/subjects"


@pytest.fixture
def endpoints(world):
    """Support AI's endpoint, and two private endpoints of Contracts (another department's team): one priced."""
    own = Endpoint.objects.create(name="support-ep", owner_team=world.team)
    private = Endpoint.objects.create(name="contracts-private", owner_team=world.other_team)
    listed = Endpoint.objects.create(name="contracts-listed", owner_team=world.other_team)
    price(PriceKind.ENDPOINT, listed.pk, listed.name, input_per_million="1")
    return own, private, listed


def _names(call, world, role: str) -> list[str]:
    response = call(world, role, "GET", f"{SUBJECTS}?kind=endpoint")
    assert response.status_code == 200, response.content[:300]
    return [row["name"] for row in response.json()["items"]]


def test_a_team_owner_lists_its_own_and_the_priced_endpoints_not_another_teams_private_one(
    world, call, endpoints
):
    assert _names(call, world, "owner") == ["contracts-listed", "support-ep"]


def test_a_department_manager_lists_the_endpoints_of_their_departments_teams(world, call, endpoints):
    """A manager reads the billing of every team of their department, in none of which they are: its
    teams' endpoints, priced or not, and not another department's unpriced private one."""
    assert _names(call, world, "manager") == ["contracts-listed", "support-ep"]


def test_org_wide_readers_list_every_endpoint(world, call, endpoints):
    everything = ["contracts-listed", "contracts-private", "support-ep"]
    assert _names(call, world, "admin") == everything
    assert _names(call, world, "auditor") == everything


def test_a_price_set_without_a_start_counts_from_the_next_hour_and_this_hours_calls_keep_theirs(
    org, team, other_team
):
    price(PriceKind.ENDPOINT, 11, "router", LONG_AGO, input_per_million="1.00")
    now = timezone.now()
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    tokens(f"{this_hour:%Y-%m-%d %H:%M}", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=1_000_000)  # fmt: skip

    raised = services.set_price(
        actor=actor_for(org["admin"]), subject=subjects.Subject(PriceKind.ENDPOINT, "11", "router"),
        input_per_million="5.00",
    )  # fmt: skip
    assert raised.effective_from == this_hour + timedelta(hours=1)
    lines = charges_of({other_team.department_id}, money.month_start(this_hour), timezone.now())
    assert [(line.kind, line.unit_price, line.amount) for line in lines if line.team_id == other_team.pk] == [
        (LineKind.TOKENS, Decimal("1.00"), Decimal("1.00"))
    ]


def test_a_price_may_still_be_back_dated_explicitly_within_an_open_month(org):
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    back_dated = services.set_price(
        actor=actor_for(org["admin"]), subject=subjects.Subject(PriceKind.ENDPOINT, "11", "router"),
        effective_from=this_hour, input_per_million="2.00",
    )  # fmt: skip
    assert back_dated.effective_from == this_hour

"""The endpoint page's cost figures (costs.endpoint_this_month): each rate derived from the exact cost and
rounded once, and calls in hours without a price (none, or one with no rate) costing their share of the
deployment's compute, as billing charges them."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from portfolio.billing import charges, costs, pricing
from portfolio.billing.choices import LineKind, PriceKind
from portfolio.billing.meters import TokenHour, replace_token_hours
from portfolio.billing.models import TokenUsage
from tests.billing.conftest import at, compute, price

pytestmark = pytest.mark.django_db

OCTOBER = date(2026, 10, 1)
AS_OF = at("2026-10-20 00:00")
ENDPOINT = 11


def _calls(hour: str, owner, caller, *, requests: int, tokens_in: int, tokens_out: int, endpoint_id=ENDPOINT,
           endpoint="support", deployment="dep") -> None:  # fmt: skip
    when = at(hour)
    # The rollup hands over whole hours: keep the hour's other rows.
    others = [
        TokenHour(**{name: getattr(row, name) for name in TokenHour.__dataclass_fields__})
        for row in TokenUsage.objects.filter(hour=when)
    ]
    replace_token_hours(
        when,
        when + timedelta(hours=1),
        [*others, TokenHour(when, endpoint_id, endpoint, owner.pk, owner.department_id, deployment, caller.pk,
                            caller.department_id, requests, tokens_in, tokens_out, 0)],
    )  # fmt: skip


def _three_core_hours(team) -> None:
    """The deployment's compute this month: 3 core-hours at 1.00, 3.00 in all."""
    price(PriceKind.POOL, 5, "gpu-a", cpu_core_hour="1")
    compute("replica:1", team, "2026-10-10 10:00", "2026-10-10 11:00", cpu_cores=3)


def _billed_at_cost(team) -> Decimal:
    lines = charges.charges(team.department_id, OCTOBER, AS_OF)
    return sum((line.amount for line in lines if line.team_id == team.pk and line.kind == LineKind.AT_COST),
               Decimal(0))  # fmt: skip


def test_rates_come_from_the_exact_cost_not_from_the_cost_rounded_to_cents(team):
    price(PriceKind.ENDPOINT, ENDPOINT, "support", input_per_million="0.2", output_per_million="0.2")
    # 100 requests and 20,000 tokens at 0.20 a million: exactly 0.004.
    _calls("2026-10-10 10:00", team, team, requests=100, tokens_in=15_000, tokens_out=5_000)
    cost = costs.endpoint_this_month(ENDPOINT, AS_OF)
    assert (cost.cost, cost.per_thousand_requests, cost.per_million_tokens) == (
        Decimal("0.00"),
        Decimal("0.04"),
        Decimal("0.20"),
    )


def test_three_requests_costing_half_a_cent_are_1_67_per_thousand_not_3_33(team):
    price(PriceKind.ENDPOINT, ENDPOINT, "support", input_per_million="1", output_per_million="1")
    _calls("2026-10-10 10:00", team, team, requests=3, tokens_in=4_000, tokens_out=1_000)  # 0.005
    cost = costs.endpoint_this_month(ENDPOINT, AS_OF)
    assert (cost.cost, cost.per_thousand_requests, cost.per_million_tokens) == (
        Decimal("0.01"),
        Decimal("1.67"),
        Decimal("1.00"),
    )


def test_a_price_with_no_rate_is_at_cost_on_the_page_as_in_billing(team, other_team):
    _three_core_hours(team)
    price(PriceKind.ENDPOINT, ENDPOINT, "support", input_per_million="0", output_per_million="0")
    _calls("2026-10-10 10:00", team, other_team, requests=10, tokens_in=100, tokens_out=100)
    cost = costs.endpoint_this_month(ENDPOINT, AS_OF)
    assert _billed_at_cost(other_team) == Decimal("3.00")
    assert (cost.cost, cost.per_thousand_requests, cost.priced, cost.at_cost) == (
        Decimal("3.00"),
        Decimal("300.00"),
        False,
        True,
    )


def test_calls_before_the_first_price_version_are_at_cost_on_the_page_as_in_billing(team, other_team):
    _three_core_hours(team)
    price(PriceKind.ENDPOINT, ENDPOINT, "support", at("2026-10-10 11:00"), input_per_million="1",
          output_per_million="1")  # fmt: skip
    _calls("2026-10-10 10:00", team, other_team, requests=10, tokens_in=100, tokens_out=100)
    cost = costs.endpoint_this_month(ENDPOINT, AS_OF)
    assert _billed_at_cost(other_team) == Decimal("3.00")
    assert (cost.cost, cost.priced, cost.at_cost) == (Decimal("3.00"), False, True)


def test_priced_hours_at_their_price_and_unpriced_hours_at_their_share_of_compute(team, other_team):
    _three_core_hours(team)
    price(PriceKind.ENDPOINT, ENDPOINT, "support", at("2026-10-10 11:00"), input_per_million="1",
          output_per_million="1")  # fmt: skip
    _calls("2026-10-10 10:00", team, other_team, requests=10, tokens_in=100, tokens_out=100)  # at cost: 3.00
    _calls("2026-10-10 12:00", team, other_team, requests=1, tokens_in=0, tokens_out=0)  # priced, no tokens
    _calls("2026-10-10 13:00", team, other_team, requests=1, tokens_in=10_000, tokens_out=0, deployment="")
    cost = costs.endpoint_this_month(ENDPOINT, AS_OF)
    # The deployment served 200 tokens (the 10,000 went nowhere named): all its compute, plus 0.01 of tokens.
    assert (cost.cost, cost.priced, cost.at_cost) == (Decimal("3.01"), True, True)


def test_the_compute_share_is_by_tokens_as_billed_not_by_requests(team, other_team):
    """Two endpoints on one deployment: billing shares its compute by tokens served; so does the page."""
    _three_core_hours(team)
    _calls("2026-10-10 10:00", team, other_team, requests=1, tokens_in=300, tokens_out=0)
    _calls("2026-10-10 10:00", team, team, requests=3, tokens_in=100, tokens_out=0, endpoint_id=12,
           endpoint="other")  # fmt: skip
    cost = costs.endpoint_this_month(ENDPOINT, AS_OF)
    # 300 of the 400 tokens the deployment served: 2.25 (by requests it would be 1 of 4: 0.75).
    assert _billed_at_cost(other_team) == Decimal("2.25")
    assert cost.cost == Decimal("2.25")


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ({}, False),
        ({"input_per_million": "0", "output_per_million": "0", "audio_second": "0"}, False),
        ({"output_per_million": "0.5"}, True),
        ({"audio_second": "0.01"}, True),
    ],
)
def test_an_endpoint_is_priced_only_by_a_version_with_a_rate(rates, expected):
    version = price(PriceKind.ENDPOINT, ENDPOINT, "support", **rates)
    assert pricing.priced(version) is expected
    assert pricing.priced(None) is False

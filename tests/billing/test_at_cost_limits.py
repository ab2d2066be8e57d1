"""A team's at-cost shares (calls to another team's unpriced endpoint) reach its hard limit as other spend, as
compute and storage do: they lower the limit. Stored as token spend they were the seed of the gateway's
counter, which never counts them live (such a call settles to 0): each admission raised the counter to the
seed again, dropping the priced calls settled since the spend was measured (found by review: a team at a
limit of 10.00 spent 13.80)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from portfolio.billing import alerts, budgets
from portfolio.billing.models import Budget
from serving.gateway.limits import SpendCaps
from tests.billing.conftest import at, compute, tokens
from tests.conftest import actor_for
from tests.gateway.spend_counters import counter, record, run
from tests.gateway.test_hard_limits import admit_many, ids

pytestmark = pytest.mark.django_db

CALL = 400_000  # each priced call to a third team's endpoint reserves and costs 0.40 (micro-units)


def test_an_at_cost_share_is_other_spend_not_token_spend(org, priced, team, other_team):
    at_cost_share(team, other_team)
    budgets.set_budget(actor=actor_for(org["admin"]), team=other_team, amount="10", hard_limit=True)
    alerts.check(at("2026-10-31 23:59"))
    stored = Budget.objects.get(team=other_team)
    assert (stored.token_spend, stored.other_spend) == (Decimal("0.00"), Decimal("5.00"))
    assert budgets.hard_limits(at("2026-10-31 23:59"))[("team", other_team.pk)] == (5_000_000, 0)


def test_a_team_calling_at_cost_and_priced_endpoints_passes_its_hard_limit_by_at_most_one_call(
    org, priced, team, other_team
):
    at_cost_share(team, other_team)
    budgets.set_budget(actor=actor_for(org["admin"]), team=other_team, amount="10", hard_limit=True)
    alerts.check(at("2026-10-03 00:00"))  # before the shared endpoint's hours: nothing spent yet
    redis_team, department = ids()  # the counters live in the shared Redis, where database ids repeat

    def caps(now: str):
        limit = budgets.hard_limits(at(now))[("team", other_team.pk)]
        return lambda key: SpendCaps(redis_team, department, team=limit, team_reserve=CALL)

    key = record(redis_team, department)
    admitted, _ = run(admit_many(caps("2026-10-03 00:00"), [key], CALL, CALL, rounds=10))
    assert admitted == 10 and counter(f"gw:tm:{redis_team}") == 10 * CALL
    # The check measures the month: the at-cost share (5.00) is on the ledger; the 10 priced calls are not
    # yet (they reach it through the usage flush and the hourly rollup).
    alerts.check(at("2026-10-31 23:59"))
    admitted, refused = run(admit_many(caps("2026-10-31 23:59"), [key], CALL, CALL, rounds=20))
    spent = 10 * CALL + 5_000_000 + admitted * CALL
    assert refused and spent <= 10_000_000 + CALL, f"spent {spent / 1e6:.2f} of a limit of 10.00"


def at_cost_share(team, other_team) -> None:
    """``other_team`` is the only caller of ``team``'s unpriced endpoint, served by 2 GPU-hours at 2.50:
    its at-cost share is 5.00."""
    compute("replica:40", team, "2026-10-03 00:00", "2026-10-03 02:00", gpus=1, subject="shared-dep")
    tokens("2026-10-03 01:00", endpoint_id=12, endpoint="free", owner=team, caller=other_team,
           tokens_in=100_000, deployment="shared-dep")  # fmt: skip

"""The daily series (the billing page's chart and `GET /api/v1/billing/spend`) of a month in which a replica
held a share of a GPU: a share has four decimal places, and the series' exact denominator did not allow for
them, so a 6-decimal GPU-hour price made it raise, a 500 for every reader of that department's month (found by
review). The statement, in exact fractions, was right: the series must agree with it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from portfolio.billing import access, daily, overview, statements
from portfolio.billing.choices import PriceKind
from tests.billing.conftest import compute, price

pytestmark = pytest.mark.django_db
OCTOBER = date(2026, 10, 1)
AFTER = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("share", "gpu_hour", "billed"),
    [
        ("0.9", "1.234567", "2.22"),  # 0.9 x 2 h x 1.234567 = 2.2222206
        ("0.45", "0.000001", "0.00"),
        ("0.3333", "1.234", "0.82"),  # 0.82258...
        ("0.9", "2.5", "4.50"),
    ],
)
def test_a_gpu_share_at_a_six_decimal_price_is_in_the_series_as_on_the_statement(
    team, share, gpu_hour, billed
):
    price(PriceKind.POOL, 5, "gpu-a", gpu_hour=gpu_hour)
    compute("replica:9", team, "2026-10-03 10:00", "2026-10-03 12:00", gpus=Decimal(share))
    lines = statements.compute(team.department, OCTOBER, AFTER)
    assert sum(line.amount for line in lines) == Decimal(billed)

    series = daily.series(OCTOBER, AFTER, [team.department_id])
    spend = overview.month_spend(access.Reader(True, frozenset(), frozenset()), OCTOBER, AFTER)

    exact = sum(sum(days) for days in series.amounts.values())
    assert daily._cents(exact, series.denominator) == Decimal(billed)
    assert spend.total == Decimal(billed)

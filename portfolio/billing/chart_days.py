"""Spend per day of a month, for the billing page's chart: cheap, from the ledger's sums, not a statement.

Tokens are priced at the endpoint's price in force in each hour, for calls by teams other than the
endpoint's owner (a team's own calls are free: it pays their compute); compute is each interval's part of
each day at its pool's price. Credits, at-cost shares and storage are left out: they settle on the
statement, whose total the page shows beside the chart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from django.db.models import F, Q, Sum

from portfolio.billing import money
from portfolio.billing.charges import HOUR_SECONDS, RESOURCES
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import ComputeInterval, TokenUsage
from portfolio.billing.pricing import PriceBook


@dataclass
class Day:
    """One day's spend: tokens at list price and compute, rounded to the cent for display."""

    day: date
    tokens: Decimal
    compute: Decimal

    @property
    def total(self) -> Decimal:
        return self.tokens + self.compute


def _scope(
    query, departments: Iterable[int] | None, teams: Iterable[int] | None, field: str = "department_id"
):
    """Rows of the departments read whole, or of the teams read (None for both: everything)."""
    if departments is None and teams is None:
        return query
    condition = Q(pk__in=[])
    if departments:
        condition |= Q(**{f"{field}__in": list(departments)})
    if teams:
        condition |= Q(team_id__in=list(teams))
    return query.filter(condition)


def _rate(price, name: str) -> Fraction:
    return Fraction(getattr(price, name)) if price is not None else Fraction(0)


def per_day(
    month: date,
    as_of: datetime,
    *,
    departments: Iterable[int] | None = None,
    teams: Iterable[int] | None = None,
) -> list[Day]:
    """Each day of ``month`` up to ``as_of``'s day: what the departments (whole) and teams spent on it."""
    start, end = money.month_bounds(month)
    until = min(end, as_of)
    book = PriceBook.load(kinds=[PriceKind.ENDPOINT, PriceKind.POOL], until=end)
    days = [month + timedelta(days=i) for i in range(max(0, (until.date() - month).days + (until < end)))]
    tokens = {day: Fraction(0) for day in days}
    compute = {day: Fraction(0) for day in days}
    # One row per hour and endpoint (the callers summed), own calls excluded: a few hundred rows a day.
    rows = (
        _scope(TokenUsage.objects.filter(hour__gte=start, hour__lt=until), departments, teams)
        .exclude(endpoint_id__isnull=True)
        .exclude(team_id=F("owner_team_id"))
        .values_list("hour", "endpoint_id")
        .annotate(tokens_in=Sum("input_tokens"), tokens_out=Sum("output_tokens"))
    )
    for hour, endpoint_id, tokens_in, tokens_out in rows:
        price = book.at(PriceKind.ENDPOINT, endpoint_id, hour)
        if price is None or hour.date() not in tokens:
            continue
        tokens[hour.date()] += Fraction(tokens_in or 0, money.MILLION) * _rate(price, "input_per_million")
        tokens[hour.date()] += Fraction(tokens_out or 0, money.MILLION) * _rate(price, "output_per_million")
    intervals = _scope(
        ComputeInterval.objects.filter(started_at__lt=until).filter(
            Q(ended_at__isnull=True) | Q(ended_at__gt=start)
        ),
        departments,
        teams,
    )
    for interval in intervals:
        begin, finish = max(interval.started_at, start), min(interval.ended_at or as_of, until)
        for a, b, price in book.spans(PriceKind.POOL, interval.pool_id, begin, finish):
            while a < b:  # cut at each midnight (UTC)
                midnight = datetime.combine(a.date() + timedelta(days=1), datetime.min.time(), a.tzinfo)
                piece_end = min(b, midnight)
                hours = Fraction((piece_end - a) // timedelta(microseconds=1), HOUR_SECONDS * 1_000_000)
                if a.date() in compute:
                    compute[a.date()] += hours * cost_per_hour(interval, price)
                a = piece_end
    return [Day(day, money.cents(tokens[day]), money.cents(compute[day])) for day in days]


def cost_per_hour(interval: ComputeInterval, price) -> Fraction:
    """What the interval's held GPUs, cores and memory cost for one hour at ``price`` (a pool's)."""
    total = Fraction(0)
    for field_name, rate_name, _unit in RESOURCES:
        held = getattr(interval, field_name)
        amount = Fraction(held, money.GIB) if field_name == "memory_bytes" else Fraction(held)
        total += amount * _rate(price, rate_name)
    return total

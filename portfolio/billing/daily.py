"""A month's charges per day, for the billing charts: priced tokens, compute and storage of each
(department, team), from the same ledger and price book as the statements, in four queries whatever
the number of departments, teams or days.

What the series holds, and what it leaves to the month:

- **tokens**: calls from another team at the endpoint's price in force in their hour, charged to the
  calling team's day and credited to the owning team's day (``charges``' rule; a team's own calls are
  priced 0, so they add tokens but no money);
- **compute**: each replica and job interval cut into days and priced with ``charges._compute`` (the
  pool's price in force over each piece), to the owning team;
- **storage**: each stored day's GiB x 1/(days in the month) at the store's price that day.

**At-cost shares** (calls to endpoints without a token price) are apportioned over a whole month's
replica cost, and **adjustments** belong to an earlier month: neither has a day, so neither is in the
series. Each day is rounded to the cent on its own. The statement stays the reference: the spend
endpoint reports ``month total - sum of days`` as the part not apportioned to days.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from django.db.models import Q

from portfolio.billing import money
from portfolio.billing.charges import Ledger, _compute, _intervals, _rate
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import StorageDay, TokenUsage
from portfolio.billing.pricing import PriceBook

Cell = tuple[int, int | None]  # (department id, team id)


@dataclass
class Days:
    """Exact amounts and tokens per (department, team) and day of ``days``."""

    days: list[date]
    amounts: dict[Cell, list[Fraction]] = field(default_factory=dict)
    tokens: dict[Cell, list[int]] = field(default_factory=dict)

    def _row(self, table: dict, cell: Cell, zero) -> list:
        row = table.get(cell)
        if row is None:
            row = table[cell] = [zero] * len(self.days)
        return row

    def add(self, cell: Cell, index: int, amount: Fraction = Fraction(0), tokens: int = 0) -> None:
        self._row(self.amounts, cell, Fraction(0))[index] += amount
        if tokens:
            self._row(self.tokens, cell, 0)[index] += tokens

    def total(self, cells: Iterable[Cell]) -> tuple[list[Decimal], list[int]]:
        """The days of ``cells`` together: amounts rounded to the cent per day, and tokens."""
        amounts = [Fraction(0)] * len(self.days)
        tokens = [0] * len(self.days)
        for cell in cells:
            for index, value in enumerate(self.amounts.get(cell, ())):
                amounts[index] += value
            for index, count in enumerate(self.tokens.get(cell, ())):
                tokens[index] += count
        return [money.cents(value) for value in amounts], tokens

    def cells(self) -> set[Cell]:
        return set(self.amounts) | set(self.tokens)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=money.month_bounds(day)[0].tzinfo)
    return start, start + timedelta(days=1)


def month_days(month: date, as_of: datetime) -> list[date]:
    """The days of ``month`` that have begun by ``as_of`` (UTC)."""
    start, end = money.month_bounds(month)
    last = min(end, as_of)
    days, day = [], month
    while day_bounds(day)[0] < last:
        days.append(day)
        day += timedelta(days=1)
    return days


def series(month: date, as_of: datetime, department_ids: Iterable[int]) -> Days:
    """The priced tokens, compute and storage of ``department_ids`` per day of ``month`` up to ``as_of``."""
    departments = set(department_ids)
    result = Days(month_days(month, as_of))
    if not departments or not result.days:
        return result
    start, end = money.month_bounds(month)
    until = min(end, as_of)
    book = PriceBook.load(until=end)
    _tokens(result, book, departments, start, until)
    _compute_days(result, book, departments, start, until, as_of)
    _storage(result, book, departments, month)
    return result


def _tokens(result: Days, book: PriceBook, departments: set[int], start: datetime, end: datetime) -> None:
    rows = (
        TokenUsage.objects.filter(hour__gte=start, hour__lt=end)
        .filter(Q(department_id__in=departments) | Q(owner_department_id__in=departments))
        .values_list(
            "hour", "endpoint_id", "team_id", "department_id", "owner_team_id", "owner_department_id",
            "input_tokens", "output_tokens",
        )
    )  # fmt: skip
    for hour, endpoint_id, team, dept, owner, owner_dept, tokens_in, tokens_out in rows:
        index = (hour - start).days
        if dept in departments:
            result.add((dept, team), index, tokens=tokens_in + tokens_out)
        price = book.at(PriceKind.ENDPOINT, endpoint_id, hour) if endpoint_id is not None else None
        own = team is not None and team == owner
        if own or price is None:
            continue  # own calls are priced 0; unpriced calls of others go to the month's at-cost rule
        charged = Fraction(tokens_in, money.MILLION) * Fraction(_rate(price, "input_per_million")) + Fraction(
            tokens_out, money.MILLION
        ) * Fraction(_rate(price, "output_per_million"))
        if dept in departments:
            result.add((dept, team), index, charged)
        if owner_dept in departments:
            result.add((owner_dept, owner), index, -charged)


def _compute_days(
    result: Days, book: PriceBook, departments: set[int], start: datetime, until: datetime, as_of: datetime
) -> None:
    intervals = _intervals(None, start, until).filter(department_id__in=departments)
    first = result.days[0]
    for interval in intervals:
        begin = max(interval.started_at, start)
        finish = min(interval.ended_at or as_of, until)
        index = max((begin - start).days, 0)
        while index < len(result.days):
            day_start, day_end = day_bounds(first + timedelta(days=index))
            if day_start >= finish:
                break
            scratch = Ledger()
            _compute(scratch, book, [interval], day_start, day_end, as_of)
            amount = sum((line.exact_amount for line in scratch.lines.values()), Fraction(0))
            result.add((interval.department_id, interval.team_id), index, amount)
            index += 1


def _storage(result: Days, book: PriceBook, departments: set[int], month: date) -> None:
    days_in_month = money.days_in(month)
    rows = StorageDay.objects.filter(
        department_id__in=departments, day__gte=month, day__lte=result.days[-1]
    ).values_list("day", "team_id", "department_id", "store", "bytes")
    per_store: dict[tuple, int] = defaultdict(int)
    for day, team, dept, store, stored in rows:
        per_store[(day, team, dept, store)] += stored
    for (day, team, dept, store), stored in per_store.items():
        rate = _rate(book.at(PriceKind.STORE, store, day_bounds(day)[0]), "gib_month")
        amount = Fraction(stored, money.GIB * days_in_month) * Fraction(rate)
        result.add((dept, team), (day - month).days, amount)

"""A month's charges per day, for the billing charts: priced tokens, compute and storage of each
(department, team), from the same ledger and price book as the statements, in four queries whatever
the number of departments, teams or days (tokens from ``token_periods``: days whole where no price
changes during them).

What the series holds, and what it leaves to the month:

- **tokens**: calls from another team at the endpoint's price in force in their hour, charged to the
  calling team's day and credited to the owning team's day (``charges``' rule; a team's own calls are
  priced 0, so they add tokens but no money);
- **compute**: each replica and job interval cut at midnights and at the pool's price changes, each piece
  priced at ``charges.cost_per_hour`` of the price in force over it, to the owning team;
- **storage**: each stored day's GiB x 1/(days in the month) at the store's price that day.

**At-cost shares** (calls to endpoints without a token price) are apportioned over a whole month's
replica cost, and **adjustments** belong to an earlier month: neither has a day, so neither is in the
series. Each day is rounded to the cent on its own. The statement stays the reference: the spend
endpoint reports ``month total - sum of days`` as the part not apportioned to days.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import connection

from portfolio.billing import money, token_periods
from portfolio.billing.charges import HOUR_SECONDS, _intervals, cost_per_hour
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import ComputeInterval
from portfolio.billing.pricing import PriceBook

Cell = tuple[int, int | None]  # (department id, team id)


PRICE_SCALE = 10**6  # prices have six decimal places
# A shared GPU is held by a share of four decimal places (0.9 of one at the default gpu_memory_utilization).
GPU_SCALE = 10 ** ComputeInterval._meta.get_field("gpus").decimal_places


def denominator(month: date) -> int:
    """A denominator every amount of the month's series is a whole multiple of: tokens x price / 10**6,
    bytes x price / (GiB x days in the month), microseconds x held x price / (3,600 x 10**6 [x GiB, or x the
    GPU share's scale])."""
    return math.lcm(
        money.MILLION * PRICE_SCALE,
        money.GIB * money.days_in(month) * PRICE_SCALE,
        HOUR_SECONDS * 10**6 * money.GIB * PRICE_SCALE * GPU_SCALE,
    )


def _cents(scaled: int, denominator: int) -> Decimal:
    """``scaled / denominator`` rounded once to the cent, half away from zero (``money.cents``'s rule)."""
    whole, rest = divmod(abs(scaled) * 100, denominator)
    if 2 * rest >= denominator:
        whole += 1
    return Decimal(-whole if scaled < 0 else whole).scaleb(-2)


@dataclass
class Days:
    """Exact amounts, tokens and audio per (department, team) and day of ``days``. An amount is kept as a
    whole number of 1/``denominator`` (exact, and integer sums are fast); it is rounded only when read."""

    days: list[date]
    denominator: int = 1
    amounts: dict[Cell, list[int]] = field(default_factory=dict)
    tokens: dict[Cell, list[int]] = field(default_factory=dict)
    # Speech calls report no tokens: their usage is the audio's length, as they are billed.
    audio_ms: dict[Cell, list[int]] = field(default_factory=dict)
    compute: dict[Cell, list[int]] = field(default_factory=dict)  # compute and storage: their part

    def scaled(self, numerator: int, denominator: int) -> int:
        """``numerator / denominator`` as a whole number of 1/``self.denominator``."""
        whole, rest = divmod(numerator * self.denominator, denominator)
        if rest:
            raise ValueError(f"{numerator}/{denominator} is not a multiple of 1/{self.denominator}")
        return whole

    def _row(self, table: dict, cell: Cell) -> list:
        row = table.get(cell)
        if row is None:
            row = table[cell] = [0] * len(self.days)
        return row

    def add(
        self,
        cell: Cell,
        index: int,
        amount: int = 0,
        tokens: int = 0,
        audio_ms: int = 0,
        *,
        compute: bool = False,
    ) -> None:
        """Add ``amount`` (in 1/``denominator``), ``tokens`` and ``audio_ms`` to the cell's day."""
        self._row(self.amounts, cell)[index] += amount
        if compute:
            self._row(self.compute, cell)[index] += amount
        if tokens:
            self._row(self.tokens, cell)[index] += tokens
        if audio_ms:
            self._row(self.audio_ms, cell)[index] += audio_ms

    def _sum(self, table: dict, cells: Iterable[Cell]) -> list[int]:
        sums = [0] * len(self.days)
        for cell in cells:
            for index, value in enumerate(table.get(cell, ())):
                sums[index] += value
        return sums

    def total(self, cells: Iterable[Cell]) -> tuple[list[Decimal], list[int]]:
        """The days of ``cells`` together: amounts rounded to the cent per day, and tokens."""
        cells = list(cells)
        amounts = self._sum(self.amounts, cells)
        return [_cents(value, self.denominator) for value in amounts], self._sum(self.tokens, cells)

    def audio_seconds(self, cells: Iterable[Cell]) -> list[Decimal]:
        """The seconds of audio of the days of ``cells`` together (exact: the ledger counts milliseconds)."""
        return [money.seconds(value) for value in self._sum(self.audio_ms, cells)]

    def compute_total(self, cells: Iterable[Cell]) -> list[Decimal]:
        """The compute and storage part of the days of ``cells``, rounded to the cent per day."""
        return [_cents(value, self.denominator) for value in self._sum(self.compute, cells)]

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
    result = Days(month_days(month, as_of), denominator(month))
    if not departments or not result.days:
        return result
    start, end = money.month_bounds(month)
    until = min(end, as_of)
    book = PriceBook.load(until=end)
    _tokens(result, book, departments, start, until)
    _compute_days(result, book, departments, start, until, as_of)
    _storage(result, departments, month)
    return result


# One row per day and caller (grouping set 0) and per day and owner (1): the tokens and audio milliseconds
# the callers used, and what calls by other teams than the owner cost at the price in force in their
# period, times a million (``input x price + output x price + audio``: exact in numeric; divided once in
# Python). Own calls cost 0; unpriced calls are null (the month's at-cost rule).
TOKENS_BY_DAY = """
WITH {periods},
priced AS (
    SELECT (at AT TIME ZONE 'UTC')::date - %s::date AS day, team_id, department_id, owner_team_id, owner_department_id,
           input_tokens + output_tokens AS tokens, audio_ms,
           CASE WHEN team_id = owner_team_id THEN 0
                ELSE input_tokens * input_per_million + output_tokens * output_per_million
                     + audio_ms * audio_second * 1000 END AS charged
    FROM periods
)
SELECT GROUPING(team_id, department_id), day, team_id, department_id, owner_team_id, owner_department_id,
       sum(tokens), sum(audio_ms), sum(charged)
FROM priced
GROUP BY GROUPING SETS ((day, team_id, department_id), (day, owner_team_id, owner_department_id))
"""


def _tokens(result: Days, book: PriceBook, departments: set[int], start: datetime, end: datetime) -> None:
    sql, params = token_periods.periods(departments, book, start, end)
    with connection.cursor() as cursor:
        cursor.execute(TOKENS_BY_DAY.format(periods=sql), [*params, start.date()])
        rows = cursor.fetchall()
    for owners, index, team, dept, owner, owner_dept, tokens, audio_ms, charged in rows:
        if not 0 <= index < len(result.days):
            continue
        numerator, denominator_ = (charged or Decimal(0)).as_integer_ratio()
        amount = result.scaled(numerator, denominator_ * money.MILLION)
        if not owners and dept in departments:
            result.add((dept, team), index, amount, int(tokens or 0), int(audio_ms or 0))
        elif owners and owner_dept in departments and amount:
            result.add((owner_dept, owner), index, -amount)


def _compute_days(
    result: Days, book: PriceBook, departments: set[int], start: datetime, until: datetime, as_of: datetime
) -> None:
    """Each interval's pieces at one pool price, cut at midnights: microseconds x the price per microsecond."""
    first = day_bounds(result.days[0])[0]
    for interval in _intervals(departments, start, until):
        cell = (interval.department_id, interval.team_id)
        begin, finish = max(interval.started_at, start), min(interval.ended_at or as_of, until)
        for a, b, price in (
            book.spans(PriceKind.POOL, interval.pool_id, begin, finish) if finish > begin else ()
        ):
            hourly = cost_per_hour(interval, price)
            per_microsecond = result.scaled(hourly.numerator, hourly.denominator * HOUR_SECONDS * 10**6)
            while a < b:
                index = (a - first).days
                piece_end = min(b, first + timedelta(days=index + 1))
                if 0 <= index < len(result.days):
                    microseconds = (piece_end - a) // timedelta(microseconds=1)
                    result.add(cell, index, microseconds * per_microsecond, compute=True)
                a = piece_end


# Each day's stored bytes x the store's price in force at its midnight, per (day, department, team).
STORAGE_BY_DAY = """
WITH versions AS (
    SELECT subject_id, effective_from, gib_month,
           lead(effective_from) OVER (PARTITION BY subject_id ORDER BY effective_from) AS until
    FROM billing_price WHERE kind = 'store'
)
SELECT s.day, s.department_id, s.team_id, sum(s.bytes * v.gib_month)
FROM billing_storageday s
JOIN versions v ON v.subject_id = s.store AND v.effective_from <= s.day::timestamp AT TIME ZONE 'UTC'
     AND (v.until IS NULL OR s.day::timestamp AT TIME ZONE 'UTC' < v.until)
WHERE s.department_id = ANY(%s) AND s.day >= %s AND s.day <= %s
GROUP BY 1, 2, 3
"""


def _storage(result: Days, departments: set[int], month: date) -> None:
    per_gib_month = money.GIB * money.days_in(month)  # a day's bytes are bytes / GiB / days GiB-months
    with connection.cursor() as cursor:
        cursor.execute(STORAGE_BY_DAY, [list(departments), month, result.days[-1]])
        rows = cursor.fetchall()
    for day, dept, team, priced in rows:
        numerator, denominator_ = priced.as_integer_ratio()
        amount = result.scaled(numerator, denominator_ * per_gib_month)
        result.add((dept, team), (day - month).days, amount, compute=True)

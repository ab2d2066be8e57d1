"""The charges of one department in one month, from billing's own ledger and price book.

Rules (the README's chargeback section says the same):

- **Tokens** are charged to the calling team, at the endpoint's price in force in the hour of the call.
  The owning team is credited what other teams' calls paid (a team never pays itself: its own calls
  appear at price 0, its compute is what it pays for them).
- **At cost**: calls from another team to an endpoint with no token price pay a share of the compute
  of the deployment that answered them in the month: its replica cost times the caller's share of all
  the tokens that deployment served in the month. The owner is credited the same.
- **Compute**: replica and job intervals, clipped to the month (an open one up to ``as_of``), cut where
  the pool's price changes, charged per GPU-hour, CPU-core-hour and memory-GiB-hour to the owning team.
- **Storage**: each day's stored bytes as GiB x 1/(days in the month) GiB-months, at the store's price
  in force that day.

Every quantity is summed exactly (``Fraction``) over the events and intervals of a line, each priced one
by one; the amount is rounded once, per line (money.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cached_property

from django.db import connection
from django.db.models import Q, Sum

from portfolio.billing import money, token_periods
from portfolio.billing.choices import ComputeKind, LineKind, PriceKind
from portfolio.billing.models import ComputeInterval, TokenDay
from portfolio.billing.pricing import PriceBook, priced

HOUR_SECONDS = 3600
RESOURCES = (  # (interval field, pool rate field, unit)
    ("gpus", "gpu_hour", "GPU-hours"),
    ("cpu_cores", "cpu_core_hour", "core-hours"),
    ("memory_bytes", "memory_gib_hour", "GiB-hours"),
)


Scope = set[int] | frozenset[int] | None  # the departments to compute for (None: all of them)


def _in(departments: Scope, department_id) -> bool:
    return departments is None or department_id in departments


@dataclass
class Line:
    """One line of a statement while it is computed: exact sums, rounded only when read."""

    department_id: int | None
    team_id: int | None
    kind: str
    subject: str
    detail: str
    unit: str
    unit_price: Decimal
    exact_quantity: Fraction = Fraction(0)
    exact_amount: Fraction = Fraction(0)
    team: str = ""
    # For a caller's tokens and at-cost lines: the department that owns what was called (spend.py: a call
    # between two teams of one department costs that department nothing, its credit offsets it).
    owner_department_id: int | None = None

    # Read once the line is complete (charges_of returns only complete lines): each is rounded once.
    @cached_property
    def quantity(self) -> Decimal:
        return money.quantity(self.exact_quantity)

    @cached_property
    def amount(self) -> Decimal:
        return money.cents(self.exact_amount)


@dataclass
class Ledger:
    """Lines being summed, one per (department, team, kind, subject, detail, unit, unit price, owning
    department of what a caller's line called)."""

    lines: dict[tuple, Line] = field(default_factory=dict)

    def add(self, department_id, team_id, kind, subject, detail, unit, unit_price: Decimal, qty: Fraction,
            amount: Fraction, owner_department_id: int | None = None):  # fmt: skip
        key = (department_id, team_id, kind, subject, detail, unit, unit_price, owner_department_id)
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = Line(department_id, team_id, kind, subject, detail, unit, unit_price,
                                          owner_department_id=owner_department_id)  # fmt: skip
        line.exact_quantity += qty
        line.exact_amount += amount


def _rate(price, name: str) -> Decimal:
    return getattr(price, name) if price is not None else Decimal("0")


TOKENS_BY_PRICE = """
WITH {periods}
SELECT endpoint_id, endpoint, deployment, team_id, department_id, owner_team_id, owner_department_id, price_id,
       sum(input_tokens), sum(output_tokens), sum(audio_ms)
FROM periods
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


def _token_rows(departments: Scope, book: PriceBook, start: datetime, end: datetime):
    """The month's token usage summed per (endpoint, deployment, caller, owner, price version in force):
    a price is constant within a group, so pricing the sum is pricing each call and adding up."""
    sql, params = token_periods.periods(departments, book, start, end)
    with connection.cursor() as cursor:
        cursor.execute(TOKENS_BY_PRICE.format(periods=sql), params)
        return cursor.fetchall()


def _tokens(ledger: Ledger, book: PriceBook, departments: Scope, start: datetime, end: datetime) -> dict:
    """Token lines of the departments' callers and credits of their owning teams; returns the unpriced
    usage by other teams, for the at-cost rule: {(deployment, caller team, caller department,
    owner team, owner department): [tokens, audio milliseconds]}."""
    rows = _token_rows(departments, book, start, end)
    unpriced: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])  # [tokens, audio milliseconds]
    # Tokens per line first (a line has one unit price: pricing its sum is pricing each row), then lines.
    per_line: dict[tuple, int] = defaultdict(
        int
    )  # (department, team, kind, endpoint, detail, unit price, owner)
    # Tokens (M) and audio seconds other teams paid for, per (owner's department, owner, endpoint, what, unit,
    # unit price, caller's department, caller): each caller's line as charged, for the owner's credit.
    paid: dict[tuple, Fraction] = defaultdict(Fraction)
    for (
        endpoint_id,
        endpoint,
        deployment,
        team,
        dept,
        owner,
        owner_dept,
        price_id,
        tokens_in,
        tokens_out,
        audio_ms,
    ) in rows:
        tokens_in, tokens_out = int(tokens_in), int(tokens_out)  # sum() of bigint is numeric in PostgreSQL
        price = book.version(price_id) if endpoint_id is not None else None
        rates = (_rate(price, "input_per_million"), _rate(price, "output_per_million"))
        own = team is not None and team == owner
        if audio_ms:
            who = (dept, team, endpoint, owner, owner_dept)
            _audio(ledger, paid, departments, who, int(audio_ms), price, own)
        if not own and not priced(price):  # unpriced: at cost
            if deployment:
                used = unpriced[(deployment, team, dept, owner, owner_dept)]
                used[0] += tokens_in + tokens_out
                used[1] += int(audio_ms or 0)
            continue
        for direction, tokens, rate in (("input", tokens_in, rates[0]), ("output", tokens_out, rates[1])):
            if not tokens:
                continue
            if _in(departments, dept):
                detail = f"{direction} tokens" + (" (own endpoint: its compute is charged)" if own else "")
                unit_price = Decimal(0) if own else rate
                per_line[(dept, team, LineKind.TOKENS, endpoint, detail, unit_price, owner_dept)] += tokens
            if _in(departments, owner_dept) and not own:
                what = f"{direction} tokens"
                paid[(owner_dept, owner, endpoint, what, "M tokens", rate, dept, team)] += Fraction(
                    tokens, money.MILLION
                )
    for (dept, team, kind, endpoint, detail, unit_price, called), tokens in per_line.items():
        millions = Fraction(tokens, money.MILLION)
        ledger.add(dept, team, kind, endpoint, detail, "M tokens", unit_price, millions,
                   millions * Fraction(unit_price), called)  # fmt: skip
    _credits(ledger, paid)
    return unpriced


def _credits(ledger: Ledger, paid: dict) -> None:
    """The owning teams' credits of tokens and audio: what each calling team's line was charged, rounded as
    that line is, summed (rounding the credit's own total instead would credit the owner more or less than
    the callers paid)."""
    for (owner_dept, owner, endpoint, what, unit, rate, _dept, _team), qty in paid.items():
        charged = Fraction(money.cents(qty * Fraction(rate)))
        ledger.add(owner_dept, owner, LineKind.CREDIT, endpoint, f"{what} called by other teams (as each was charged)",
                   unit, -rate, qty, -charged)  # fmt: skip


def _audio(
    ledger: Ledger, paid: dict, departments: Scope, who: tuple, audio_ms: int, price, own: bool
) -> None:
    """Audio seconds of calls to a speech model: charged to the caller at the endpoint's ``audio_second``
    (own calls at 0, as own tokens), and counted in ``paid`` for the owner's credit (``_credits``)."""
    dept, team, endpoint, owner, owner_dept = who
    rate = _rate(price, "audio_second")
    seconds = Fraction(audio_ms, 1000)
    if _in(departments, dept) and (own or rate):
        detail = "audio seconds" + (" (own endpoint: its compute is charged)" if own else "")
        unit_price = Decimal(0) if own else rate
        ledger.add(dept, team, LineKind.TOKENS, endpoint, detail, "seconds", unit_price, seconds,
                   seconds * Fraction(unit_price), owner_dept)  # fmt: skip
    if _in(departments, owner_dept) and not own and rate:
        paid[(owner_dept, owner, endpoint, "audio seconds", "seconds", rate, dept, team)] += seconds


def _intervals(departments: Scope, start: datetime, end: datetime, *, subjects: Iterable[str] = ()):
    query = ComputeInterval.objects.filter(started_at__lt=end).filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=start)
    )
    if departments is not None:
        query = query.filter(department_id__in=list(departments))
    subjects = list(subjects)
    if subjects:
        query = query.filter(kind=ComputeKind.REPLICA, subject__in=subjects)
    return query


def _compute(
    ledger: Ledger, book: PriceBook, intervals, start: datetime, end: datetime, as_of: datetime
) -> None:
    for interval in intervals:
        begin = max(interval.started_at, start)
        finish = min(interval.ended_at or as_of, end, as_of)
        if finish <= begin:
            continue
        kind = LineKind.REPLICA if interval.kind == ComputeKind.REPLICA else LineKind.JOB
        for a, b, price in book.spans(PriceKind.POOL, interval.pool_id, begin, finish):
            hours = Fraction((b - a) // timedelta(microseconds=1), HOUR_SECONDS * 1_000_000)
            for field_name, rate_name, unit in RESOURCES:
                held = getattr(interval, field_name)
                if not held:
                    continue
                amount_held = Fraction(held, money.GIB) if field_name == "memory_bytes" else Fraction(held)
                qty = amount_held * hours
                rate = _rate(price, rate_name)
                ledger.add(interval.department_id, interval.team_id, kind, interval.subject, f"on {interval.pool}",
                           unit, rate, qty, qty * Fraction(rate))  # fmt: skip


def cost_per_hour(interval: ComputeInterval, price) -> Fraction:
    """What the interval's held GPUs, cores and memory cost for one hour at ``price`` (a pool's)."""
    total = Fraction(0)
    for field_name, rate_name, _unit in RESOURCES:
        held = getattr(interval, field_name)
        amount = Fraction(held, money.GIB) if field_name == "memory_bytes" else Fraction(held)
        total += amount * Fraction(_rate(price, rate_name))
    return total


def interval_cost(book: PriceBook, interval: ComputeInterval, begin: datetime, finish: datetime):
    """(hours, cost) of the interval held over ``[begin, finish)``, at its pool's prices in force."""
    hours, cost = Fraction(0), Fraction(0)
    for a, b, price in book.spans(PriceKind.POOL, interval.pool_id, begin, finish):
        piece = Fraction((b - a) // timedelta(microseconds=1), HOUR_SECONDS * 1_000_000)
        hours += piece
        cost += piece * cost_per_hour(interval, price)
    return hours, cost


def compute_cost(
    book: PriceBook, deployments: Iterable[tuple[str, int]], start: datetime, end: datetime, as_of: datetime
) -> dict[tuple[str, int], Fraction]:
    """The exact replica cost of each deployment, named with its owning team (a name a deletion freed may
    be another team's since), in ``[start, end)`` (for the at-cost rule)."""
    wanted = set(deployments)
    costs: dict[tuple[str, int], Fraction] = defaultdict(Fraction)
    for interval in _intervals(None, start, end, subjects={name for name, _ in wanted}):
        key = (interval.subject, interval.team_id)
        begin, finish = max(interval.started_at, start), min(interval.ended_at or as_of, end, as_of)
        if key in wanted and finish > begin:
            costs[key] += interval_cost(book, interval, begin, finish)[1]
    return costs


def _at_cost(ledger: Ledger, book: PriceBook, departments: Scope, unpriced: dict, start, end, as_of) -> None:
    """Other teams' calls to an endpoint without a price pay their share of its deployment's replica cost
    this month, the owning team credited the same: by tokens, or by audio for a speech model (which reports
    no tokens). A deployment is its owning team's: the endpoints of a team route to its own deployments."""
    if not unpriced:
        return
    deployments = {(key[0], key[3]) for key in unpriced}
    costs = compute_cost(book, deployments, start, end, as_of)
    served = {
        (deployment, owner): (int(tokens or 0), int(audio or 0))
        for deployment, owner, tokens, audio in TokenDay.objects.filter(
            day__gte=start, day__lt=end, deployment__in={name for name, _ in deployments}
        )
        .values_list("deployment", "owner_team_id")
        .annotate(tokens=Sum("input_tokens") + Sum("output_tokens"), audio=Sum("audio_ms"))
    }
    for (deployment, team, dept, owner, owner_dept), (tokens, audio_ms) in unpriced.items():
        total_tokens, total_audio = served.get((deployment, owner), (0, 0))
        cost = costs.get((deployment, owner), Fraction(0))
        if total_tokens:
            share, detail = (
                Fraction(tokens, total_tokens),
                f"{tokens:,} of its {total_tokens:,} tokens this month",
            )
        elif total_audio:
            share = Fraction(audio_ms, total_audio)
            detail = f"{audio_ms / 1000:,.1f} of its {total_audio / 1000:,.1f} audio seconds this month"
        else:
            continue
        if not share or not cost:
            continue
        unit_price = money.to_decimal(cost, Decimal("0.000001"))
        if _in(departments, dept):
            ledger.add(dept, team, LineKind.AT_COST, deployment, detail, "share", unit_price, share, cost * share,
                       owner_dept)  # fmt: skip
        if _in(departments, owner_dept):
            # As the caller's line is charged, rounded on its own: credits of callers with the same detail
            # share a line, and rounding their sum once would credit more or less than they paid.
            charged = Fraction(money.cents(cost * share))
            ledger.add(owner_dept, owner, LineKind.CREDIT, deployment, f"at-cost share recovered: {detail}",
                       "share", -unit_price, share, -charged)  # fmt: skip


# The month's stored bytes per (department, team, store, the store's price version in force at each
# day's midnight): the price is constant within a group, so pricing the sum is pricing each day.
STORAGE_BY_PRICE = """
WITH versions AS (
    SELECT id, subject_id, effective_from,
           lead(effective_from) OVER (PARTITION BY subject_id ORDER BY effective_from) AS until
    FROM billing_price WHERE kind = 'store'
)
SELECT s.department_id, s.team_id, s.store, v.id, sum(s.bytes)
FROM billing_storageday s
LEFT JOIN versions v ON v.subject_id = s.store AND v.effective_from <= s.day::timestamp AT TIME ZONE 'UTC'
     AND (v.until IS NULL OR s.day::timestamp AT TIME ZONE 'UTC' < v.until)
WHERE s.day >= %s AND s.day <= %s {scope}
GROUP BY 1, 2, 3, 4
"""


def _storage(ledger: Ledger, book: PriceBook, departments: Scope, month: date, as_of: datetime) -> None:
    days = money.days_in(month)
    last = min(money.next_month(month) - timedelta(days=1), as_of.date())
    scope = ""
    params: list = [month, last]
    if departments is not None:
        scope, params = "AND s.department_id = ANY(%s)", [month, last, list(departments)]
    with connection.cursor() as cursor:
        cursor.execute(STORAGE_BY_PRICE.format(scope=scope), params)
        rows = cursor.fetchall()
    for department_id, team, store, price_id, stored in rows:
        rate = _rate(book.version(price_id), "gib_month")
        qty = Fraction(int(stored), money.GIB * days)  # sum() of bigint is numeric in PostgreSQL
        ledger.add(department_id, team, LineKind.STORAGE, store, "artifacts stored", "GiB-months", rate, qty,
                   qty * Fraction(rate))  # fmt: skip


ORDER = [LineKind.TOKENS, LineKind.AT_COST, LineKind.CREDIT, LineKind.REPLICA, LineKind.JOB, LineKind.STORAGE,
         LineKind.ADJUSTMENT]  # fmt: skip


def charges_of(departments: Scope, month: date, as_of: datetime) -> list[Line]:
    """Every charge of the departments (None: all) in the month up to ``as_of``, without adjustments,
    in statement order; each line names its department."""
    start, end = money.month_bounds(month)
    book = PriceBook.load(until=end)
    ledger = Ledger()
    unpriced = _tokens(ledger, book, departments, start, end)
    _at_cost(ledger, book, departments, unpriced, start, end, as_of)
    _compute(ledger, book, _intervals(departments, start, min(end, as_of)), start, end, as_of)
    _storage(ledger, book, departments, month, as_of)
    return sorted(ledger.lines.values(), key=_order)


def charges(department_id: int, month: date, as_of: datetime) -> list[Line]:
    """Every charge of one department in the month (up to ``as_of``), without adjustments, in order."""
    return charges_of({department_id}, month, as_of)


def _order(line: Line):
    return (line.department_id or 0, line.team_id or 0, ORDER.index(LineKind(line.kind)), line.subject,
            line.detail, line.unit_price)  # fmt: skip

"""The sum of a statement's lines equals, to the cent, every underlying call and compute interval priced one
by one: random usage, random price changes, an independent reference that prices each event on its own."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portfolio.accounts.models import Team
from portfolio.billing import statements
from portfolio.billing.choices import ComputeKind, PriceKind
from portfolio.billing.meters import TokenHour, replace_token_hours
from portfolio.billing.models import ComputeInterval, Price, StorageDay, TokenUsage

MONTH = date(2026, 10, 1)
START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
HOURS = 31 * 24

rates = st.one_of(
    st.sampled_from([Decimal("0"), Decimal("0.5"), Decimal("1.25"), Decimal("3"), Decimal("12.345678")]),
    st.integers(min_value=0, max_value=50_000_000).map(lambda micros: Decimal(micros) / 1_000_000),
)
token_counts = st.one_of(st.sampled_from([0, 1, 4_999, 1_000_000, 3_333_333]), st.integers(0, 5_000_000))
# Few hours, so that calls, intervals and price changes often meet in the same hour or the ones around it.
NEAR = [0, 1, 2, 100, 101, 102, HOURS - 2, HOURS - 1]
hour_offsets = st.sampled_from([-24, *NEAR])
minutes_near = st.builds(lambda hour, minute: hour * 60 + minute, st.sampled_from(NEAR), st.integers(0, 59))
events = st.lists(
    st.tuples(
        minutes_near,  # minute of the month
        st.sampled_from([1, 2]),  # endpoint
        st.sampled_from([0, 1, 2]),  # calling team
        token_counts,
        token_counts,
    ),
    max_size=40,
)
versions = st.lists(st.tuples(hour_offsets, rates, rates, rates), min_size=0, max_size=3)
intervals = st.lists(
    st.tuples(
        st.one_of(minutes_near, st.integers(min_value=-3000, max_value=HOURS * 60)),  # start minute
        st.integers(min_value=0, max_value=200),  # minutes held
        st.sampled_from([0, 1, 2]),  # team
        st.integers(min_value=0, max_value=8),
        st.integers(min_value=0, max_value=64),
        st.integers(min_value=0, max_value=64 * 2**30),
        st.sampled_from([ComputeKind.REPLICA, ComputeKind.JOB]),
    ),
    max_size=6,
)


def version_at(book: list[tuple[datetime, tuple]], when: datetime):
    """The reference's own lookup: a plain scan for the latest version not after ``when``."""
    found = None
    for since, values in book:
        if since <= when and (found is None or since >= found[0]):
            found = (since, values)
    return found[1] if found else None


def cents(value: Fraction) -> Decimal:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@pytest.fixture
def teams(department, other_department):
    return [
        Team.objects.create(department=department, name="A1", slug="a1"),
        Team.objects.create(department=other_department, name="B1", slug="b1"),
        Team.objects.create(department=department, name="A2", slug="a2"),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events, endpoint_prices=st.tuples(versions, versions), pool_prices=versions, held=intervals)
def test_every_line_is_its_events_and_intervals_priced_one_by_one_and_rounded_once(
    teams, events, endpoint_prices, pool_prices, held
):
    for model in (TokenUsage, ComputeInterval, Price, StorageDay):
        model.objects.all().delete()
    owners = {1: teams[0], 2: teams[1]}
    books: dict[str, list] = {}
    for endpoint, chosen in zip((1, 2), endpoint_prices, strict=True):
        book = books[f"e{endpoint}"] = []
        for hour, rate_in, rate_out, _ in {v[0]: v for v in chosen}.values():
            since = START + timedelta(hours=hour)
            Price.objects.create(kind=PriceKind.ENDPOINT, subject_id=str(endpoint), subject_name=f"ep{endpoint}",
                                 effective_from=since, input_per_million=rate_in, output_per_million=rate_out)  # fmt: skip
            book.append((since, (rate_in, rate_out)))
    pool_book = books["pool"] = []
    for hour, gpu, core, memory in {v[0]: v for v in pool_prices}.values():
        since = START + timedelta(hours=hour)
        Price.objects.create(kind=PriceKind.POOL, subject_id="5", subject_name="pool", effective_from=since,
                             gpu_hour=gpu, cpu_core_hour=core, memory_gib_hour=memory)  # fmt: skip
        pool_book.append((since, (gpu, core, memory)))

    # The ledger as the usage rollup writes it: sums per hour, endpoint and calling team.
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for minute, endpoint, caller, tokens_in, tokens_out in events:
        hour = START + timedelta(hours=minute // 60)
        row = sums[(hour, endpoint, caller)]
        row[0] += 1
        row[1] += tokens_in
        row[2] += tokens_out
    replace_token_hours(START, END, [
        TokenHour(hour, endpoint, f"ep{endpoint}", owners[endpoint].pk, owners[endpoint].department_id, "dep",
                  teams[caller].pk, teams[caller].department_id, n, tokens_in, tokens_out)
        for (hour, endpoint, caller), (n, tokens_in, tokens_out) in sums.items()
    ])  # fmt: skip
    for number, (start, minutes, team, gpus, cores, memory, kind) in enumerate(held):
        ComputeInterval.objects.create(
            key=f"k{number}", kind=kind, team_id=teams[team].pk, department_id=teams[team].department_id,
            subject=f"s{number}", pool_id=5, pool="pool", gpus=gpus, cpu_cores=cores, memory_bytes=memory,
            started_at=START + timedelta(minutes=start), ended_at=START + timedelta(minutes=start + minutes),
        )  # fmt: skip

    # The reference: each call and each interval priced on its own, then summed per line and rounded once;
    # an owner's credit is each calling team's line as charged (rounded), summed.
    expected: dict[int, dict[tuple, Fraction]] = defaultdict(lambda: defaultdict(Fraction))
    credited: dict[int, dict[tuple, Fraction]] = defaultdict(lambda: defaultdict(Fraction))
    for minute, endpoint, caller, tokens_in, tokens_out in events:
        when = START + timedelta(minutes=minute)
        prices = version_at(books[f"e{endpoint}"], when)
        owner, calling = owners[endpoint], teams[caller]
        if prices is None or not any(prices):
            continue  # unpriced: no token line (at cost needs a deployment with compute: none here)
        for direction, count, rate in (("in", tokens_in, prices[0]), ("out", tokens_out, prices[1])):
            if not count:
                continue
            own = owner.pk == calling.pk
            paid = Fraction(0) if own else Fraction(count, 1_000_000) * Fraction(rate)
            line = (calling.pk, "tokens", endpoint, direction, Decimal(0) if own else rate)
            expected[calling.department_id][line] += paid
            if not own:
                credited[owner.department_id][(owner.pk, endpoint, direction, rate, calling.pk)] += paid
    for number, (start, minutes, team, gpus, cores, memory, kind) in enumerate(held):
        begin = max(START + timedelta(minutes=start), START)
        finish = min(START + timedelta(minutes=start + minutes), END)
        second = begin
        while second < finish:  # one hour (or less) at a time, each priced on its own
            step = min(
                second + timedelta(hours=1) - timedelta(minutes=second.minute, seconds=second.second), finish
            )
            cuts = [since for since, _ in pool_book if second < since < step]
            step = min([step, *cuts])
            prices = version_at(pool_book, second) or (Decimal(0), Decimal(0), Decimal(0))
            hours = Fraction(int((step - second).total_seconds()), 3600)
            for held_amount, rate, unit in ((gpus, prices[0], "gpu"), (cores, prices[1], "core"),
                                            (Fraction(memory, 2**30), prices[2], "mem")):  # fmt: skip
                if held_amount:
                    line = (teams[team].pk, str(kind), number, unit, rate)
                    expected[teams[team].department_id][line] += (
                        Fraction(held_amount) * hours * Fraction(rate)
                    )
            second = step

    for department in {team.department for team in teams}:
        lines = statements.compute(department, MONTH, as_of=END)
        reference = sum((cents(amount) for amount in expected[department.pk].values()), Decimal("0.00"))
        reference -= sum((cents(amount) for amount in credited[department.pk].values()), Decimal("0.00"))
        assert sum((line.amount for line in lines), Decimal("0.00")) == reference

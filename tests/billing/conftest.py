"""Billing fixtures: ledger rows and prices written the way the meters and the price book write them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from portfolio.billing.choices import ComputeKind, PriceKind
from portfolio.billing.meters import TokenHour, open_interval, replace_token_hours
from portfolio.billing.models import ComputeInterval, Price

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    """'2026-10-10 10:00' as a UTC time."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def price(kind: str, subject_id, name: str, since: datetime = LONG_AGO, **rates) -> Price:
    return Price.objects.create(
        kind=kind,
        subject_id=str(subject_id),
        subject_name=name,
        effective_from=since,
        **{k: Decimal(str(v)) for k, v in rates.items()},
    )


def tokens(hour: str, *, endpoint_id, endpoint, owner, caller, tokens_in=0, tokens_out=0, deployment="dep",
           audio_ms=0):  # fmt: skip
    """One hour of calls by ``caller`` (a Team) to an endpoint owned by ``owner`` (a Team), into the ledger."""
    when = at(hour)
    row = TokenHour(
        hour=when,
        endpoint_id=endpoint_id,
        endpoint=endpoint,
        owner_team_id=owner.pk,
        owner_department_id=owner.department_id,
        deployment=deployment,
        team_id=caller.pk,
        department_id=caller.department_id,
        requests=1,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        audio_ms=audio_ms,
    )
    # The rollup hands over whole hours: keep the other rows of the hour.
    from portfolio.billing.models import TokenUsage

    others = [
        TokenHour(**{f: getattr(r, f) for f in TokenHour.__dataclass_fields__})
        for r in TokenUsage.objects.filter(hour=when).exclude(
            endpoint=endpoint, deployment=deployment, team_id=caller.pk
        )
    ]
    replace_token_hours(when, when + timedelta(hours=1), [*others, row])


def compute(key: str, team, start: str, end: str | None, *, pool_id=5, pool="gpu-a", kind=ComputeKind.REPLICA,
            subject="dep", gpus=0, cpu_cores=0, memory_gib=0) -> ComputeInterval:  # fmt: skip
    interval = open_interval(
        key=key,
        kind=kind,
        team_id=team.pk,
        department_id=team.department_id,
        subject=subject,
        pool_id=pool_id,
        pool=pool,
        gpus=gpus,
        cpu_cores=cpu_cores,
        memory_bytes=memory_gib * 2**30,
        started_at=at(start),
    )
    if end is not None:
        ComputeInterval.objects.filter(pk=interval.pk).update(ended_at=at(end))
        interval.refresh_from_db()
    return interval


@pytest.fixture
def priced(db):
    """Prices: an endpoint (id 11) whose price changes mid-October, a GPU pool (id 5), the local store."""
    price(
        PriceKind.ENDPOINT,
        11,
        "router",
        at("2026-10-01 00:00"),
        input_per_million="1.00",
        output_per_million="2.00",
    )
    price(
        PriceKind.ENDPOINT,
        11,
        "router",
        at("2026-10-16 00:00"),
        input_per_million="0.50",
        output_per_million="3.00",
    )
    price(PriceKind.POOL, 5, "gpu-a", gpu_hour="2.50", cpu_core_hour="0.04", memory_gib_hour="0.01")
    price(PriceKind.STORE, "local", "local", gib_month="0.10")


# The endpoint of another team that the alert tests' spending calls (charged to the caller).
SPENT_ENDPOINT_ID = 4444


@pytest.fixture
def spent(other_team):
    """``spent(team, hour, money)``: ``team``'s calls to other_team's endpoint in ``hour`` cost ``money``."""
    price(PriceKind.ENDPOINT, SPENT_ENDPOINT_ID, "contracts-llm", input_per_million=1_000_000)

    def spend(team, hour: str, money: int) -> None:
        tokens(hour, endpoint_id=SPENT_ENDPOINT_ID, endpoint="contracts-llm", owner=other_team, caller=team,
               tokens_in=money)  # fmt: skip

    return spend


def team_budget(org, team, amount: str = "100", thresholds=(50,), emails=("fin@example.com",), **more):
    """``team``'s monthly budget as the org's admin sets it (``more``: other ``set_budget`` arguments)."""
    from portfolio.billing import budgets
    from tests.conftest import actor_for

    return budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount=amount,
                              thresholds=list(thresholds), notify_emails=list(emails), **more)  # fmt: skip


# The month the statement tests bill (test_statements.py, test_statement_lines.py), and the next.
OCTOBER, NOVEMBER = date(2026, 10, 1), date(2026, 11, 1)


@pytest.fixture
def october(priced, team, other_team):
    """``team`` (CC-100) owns the endpoint "router" and a GPU replica; ``other_team`` (CC-200) calls the
    endpoint before and after its price change, runs a fine-tune and stores 10 GiB all month."""
    tokens(
        "2026-10-05 09:00", endpoint_id=11, endpoint="router", owner=team, caller=team, tokens_in=3_000_000
    )
    tokens("2026-10-10 10:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=1_000_000, tokens_out=500_000)  # fmt: skip
    tokens("2026-10-20 12:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=2_000_000, tokens_out=1_000_000)  # fmt: skip
    # From the last day of September: only October's 24 hours are October's.
    compute("replica:1", team, "2026-09-30 12:00", "2026-10-02 00:00", gpus=1, cpu_cores=4, memory_gib=8,
            subject="router-dep")  # fmt: skip
    compute("job:finetune:3:1", other_team, "2026-10-12 10:00", "2026-10-12 11:30", gpus=1,
            kind=ComputeKind.JOB, subject="fine-tune #3")  # fmt: skip
    from portfolio.billing.meters import record_storage_day

    for day in range(1, 32):
        record_storage_day(
            date(2026, 10, day), [(other_team.pk, other_team.department_id, "local", 10 * 2**30)]
        )


# A whole billing world with a user per billing role (tests/billing/world.py), for the API and its
# permission matrix.
from tests.billing.world import call, world  # noqa: E402, F401

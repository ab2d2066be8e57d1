"""An owner is credited exactly what its callers' lines were charged, each rounded as that line is: for
audio seconds and at-cost shares as for tokens (rounding the credit's sum once would bill the organisation
money it never credits)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from portfolio.accounts.models import Team
from portfolio.billing.charges import charges_of
from portfolio.billing.choices import LineKind, PriceKind
from tests.billing.conftest import compute, price, tokens

OCTOBER = date(2026, 10, 1)
AFTER_OCTOBER = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture
def third_team(other_team):
    return Team.objects.create(department=other_team.department, name="Paralegal", slug="paralegal")


def _credit_and_paid(team, kind: str, subject: str) -> tuple[Decimal, Decimal]:
    lines = charges_of(None, OCTOBER, AFTER_OCTOBER)
    credit = sum(
        (line.amount for line in lines if line.team_id == team.pk and line.kind == LineKind.CREDIT),
        Decimal(0),
    )
    paid = sum(
        (
            line.amount
            for line in lines
            if line.team_id != team.pk and line.kind == kind and line.subject == subject
        ),
        Decimal(0),
    )
    return credit, paid


def test_an_owners_audio_credit_is_what_each_caller_was_charged(db, team, other_team, third_team):
    price(PriceKind.ENDPOINT, 43, "whisper", audio_second="0.01")
    for caller in (other_team, third_team):  # half a second each: 0.005, charged 0.01 each
        tokens("2026-10-10 10:00", endpoint_id=43, endpoint="whisper", owner=team, caller=caller,
               deployment="whisper-dep", audio_ms=500)  # fmt: skip
    credit, paid = _credit_and_paid(team, LineKind.TOKENS, "whisper")
    assert paid == Decimal("0.02")
    assert credit == -paid


def test_an_owners_at_cost_credit_is_what_each_caller_was_charged(db, team, other_team, third_team):
    # An endpoint without a price, on a replica costing 0.01 in October: each caller's half is 0.005,
    # charged 0.01; the two shares read alike ("1,000 of its 2,000 tokens"), so their credits share a line.
    price(PriceKind.POOL, 7, "cpu-b", cpu_core_hour="0.01")
    compute("replica:7", team, "2026-10-10 00:00", "2026-10-10 01:00", pool_id=7, pool="cpu-b", cpu_cores=1,
            subject="free-dep")  # fmt: skip
    for caller in (other_team, third_team):
        tokens("2026-10-10 10:00", endpoint_id=12, endpoint="free", owner=team, caller=caller,
               deployment="free-dep", tokens_in=1_000)  # fmt: skip
    credit, paid = _credit_and_paid(team, LineKind.AT_COST, "free-dep")
    assert paid == Decimal("0.02")
    assert credit == -paid

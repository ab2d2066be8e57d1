"""What a department's month is charged, line by line: tokens at the price of their hour, compute shared by
the callers of an endpoint without a token price, the owner credited what its callers were charged. Closing
and correcting a month is tests/billing/test_statements.py."""

from __future__ import annotations

from decimal import Decimal

from portfolio.billing import statements
from portfolio.billing.choices import LineKind
from tests.billing.conftest import OCTOBER, compute, tokens


def amounts(lines) -> list[tuple]:
    return [(line.team_id, str(line.kind), line.subject, line.unit_price, line.amount) for line in lines]


def test_the_calling_department_pays_tokens_at_the_price_of_their_hour_and_its_own_compute(
    october, other_team
):
    lines = statements.compute(other_team.department, OCTOBER)
    assert amounts(lines) == [
        (other_team.pk, "tokens", "router", Decimal("0.50"), Decimal("1.00")),  # 2M input after the change
        (other_team.pk, "tokens", "router", Decimal("1.00"), Decimal("1.00")),  # 1M input before it
        (other_team.pk, "tokens", "router", Decimal("2.00"), Decimal("1.00")),  # 0.5M output before
        (other_team.pk, "tokens", "router", Decimal("3.00"), Decimal("3.00")),  # 1M output after
        (other_team.pk, "job", "fine-tune #3", Decimal("2.50"), Decimal("3.75")),  # 1.5 GPU-hours
        (other_team.pk, "storage", "local", Decimal("0.10"), Decimal("1.00")),  # 10 GiB all month
    ]
    assert sum(line.amount for line in lines) == Decimal("10.75")


def test_the_owning_department_pays_its_replica_and_is_credited_what_other_teams_paid(october, team):
    lines = statements.compute(team.department, OCTOBER)
    own = [line for line in lines if line.kind == LineKind.TOKENS]
    assert [(line.quantity, line.amount) for line in own] == [(Decimal("3.000000000"), Decimal("0.00"))]
    assert "own endpoint" in own[0].detail
    credits = sorted(line.amount for line in lines if line.kind == LineKind.CREDIT)
    assert credits == [Decimal("-3.00"), Decimal("-1.00"), Decimal("-1.00"), Decimal("-1.00")]
    replica = {line.unit: (line.quantity, line.amount) for line in lines if line.kind == LineKind.REPLICA}
    assert replica == {
        "GPU-hours": (Decimal("24.000000000"), Decimal("60.00")),
        "core-hours": (Decimal("96.000000000"), Decimal("3.84")),
        "GiB-hours": (Decimal("192.000000000"), Decimal("1.92")),
    }
    assert sum(line.amount for line in lines) == Decimal("59.76")


def test_token_charges_and_credits_cancel_out_across_the_organisation(october, team, other_team):
    lines = statements.compute(team.department, OCTOBER) + statements.compute(other_team.department, OCTOBER)
    assert sum(line.amount for line in lines if line.kind in (LineKind.TOKENS, LineKind.CREDIT)) == 0


def test_calls_to_an_endpoint_without_a_token_price_pay_their_share_of_its_compute_at_cost(
    priced, team, other_team
):
    """10 GPU-hours at 2.50 served 1M tokens, 30% of them to another team: it pays 7.50, the owner is
    credited 7.50 (its own 70% is covered by the replica it pays)."""
    compute("replica:9", team, "2026-10-03 00:00", "2026-10-03 10:00", gpus=1, subject="shared-dep")
    tokens("2026-10-03 01:00", endpoint_id=12, endpoint="free", owner=team, caller=other_team,
           tokens_in=200_000, tokens_out=100_000, deployment="shared-dep")  # fmt: skip
    tokens("2026-10-03 02:00", endpoint_id=12, endpoint="free", owner=team, caller=team,
           tokens_in=700_000, deployment="shared-dep")  # fmt: skip
    caller = [line for line in statements.compute(other_team.department, OCTOBER) if line.kind == "at_cost"]
    assert [(line.subject, line.quantity, line.unit_price, line.amount) for line in caller] == [
        ("shared-dep", Decimal("0.300000000"), Decimal("25.000000"), Decimal("7.50"))
    ]
    owner = statements.compute(team.department, OCTOBER)
    assert [line.amount for line in owner if line.kind == "credit"] == [Decimal("-7.50")]
    assert [line.amount for line in owner if line.kind == "replica"] == [Decimal("25.00")]


def test_a_replica_holding_part_of_a_gpu_pays_its_share_of_the_gpu_hour(priced, team):
    """Ten hours of a replica holding 0.45 of a GPU at 2.50 a GPU-hour: 4.5 GPU-hours, 11.25."""
    compute("replica:30", team, "2026-10-03 00:00", "2026-10-03 10:00", gpus=Decimal("0.45"), subject="half")
    lines = [line for line in statements.compute(team.department, OCTOBER) if line.kind == LineKind.REPLICA]
    assert [(line.unit, line.quantity, line.amount) for line in lines] == [
        ("GPU-hours", Decimal("4.500000000"), Decimal("11.25"))
    ]


def test_a_deployment_name_another_team_used_earlier_in_the_month_is_not_its_cost(priced, team, other_team):
    """``other_team`` ran "chat" for 19 GPU-hours (47.50), deleted it, and ``team`` made a new "chat" for 1
    GPU-hour (2.50), behind an unpriced endpoint another team called for all of its tokens. The at-cost
    share was of both "chat"s' cost and tokens: the caller paid for compute the owner never ran, and the
    owner was credited it."""
    from portfolio.accounts.models import Department, Team

    legal = Department.objects.create(name="Finance", cost_center="CC-300")
    third = Team.objects.create(department=legal, name="Ledger", slug="ledger")
    compute("replica:20", other_team, "2026-10-01 00:00", "2026-10-01 19:00", gpus=1, subject="chat")
    tokens("2026-10-01 01:00", endpoint_id=30, endpoint="their-chat", owner=other_team, caller=other_team,
           tokens_in=900_000, deployment="chat")  # fmt: skip
    compute("replica:21", team, "2026-10-11 00:00", "2026-10-11 01:00", gpus=1, subject="chat")
    tokens("2026-10-11 00:00", endpoint_id=31, endpoint="free", owner=team, caller=third,
           tokens_in=100_000, deployment="chat")  # fmt: skip
    caller = [line for line in statements.compute(third.department, OCTOBER) if line.kind == "at_cost"]
    assert [(line.subject, line.quantity, line.amount) for line in caller] == [
        ("chat", Decimal("1.000000000"), Decimal("2.50"))
    ]
    owner = statements.compute(team.department, OCTOBER)
    assert [line.amount for line in owner if line.kind == "credit" and line.team_id == team.pk] == [
        Decimal("-2.50")
    ]


def test_calls_to_a_speech_endpoint_without_a_price_pay_their_share_by_audio(priced, team, other_team):
    """A speech model reports no tokens: the share was 0 of 0 tokens, and other teams' transcriptions were
    free while the owner paid the whole replica. They share it by audio seconds."""
    compute("replica:22", team, "2026-10-04 00:00", "2026-10-04 04:00", gpus=1, subject="whisper-dep")
    tokens("2026-10-04 01:00", endpoint_id=32, endpoint="whisper", owner=team, caller=other_team,
           audio_ms=60_000, deployment="whisper-dep")  # fmt: skip
    tokens("2026-10-04 02:00", endpoint_id=32, endpoint="whisper", owner=team, caller=team,
           audio_ms=180_000, deployment="whisper-dep")  # fmt: skip
    caller = [line for line in statements.compute(other_team.department, OCTOBER) if line.kind == "at_cost"]
    assert [(line.subject, line.quantity, line.amount) for line in caller] == [
        ("whisper-dep", Decimal("0.250000000"), Decimal("2.50"))
    ]
    assert "60.0 of its 240.0 audio seconds" in caller[0].detail


def test_the_owner_is_credited_what_its_callers_lines_were_charged_to_the_cent(priced, team, other_team):
    """Three teams each call 10,000 tokens at 0.50 per million: each line is 0.005, charged 0.01, 0.03 in
    all. The owner's credit was its own total rounded, 0.015 to 0.02: credited less than its callers paid
    (with 200 callers of 8,000 tokens each, 0.80 credited for nothing charged)."""
    from portfolio.accounts.models import Department, Team

    callers = [other_team]
    for n in (3, 4):
        department = Department.objects.create(name=f"Dept {n}", cost_center=f"CC-{n}00")
        callers.append(Team.objects.create(department=department, name=f"Team {n}", slug=f"team-{n}"))
    for caller in callers:
        tokens("2026-10-20 10:00", endpoint_id=11, endpoint="router", owner=team, caller=caller,
               tokens_in=10_000)  # fmt: skip
    charged = [
        line.amount
        for caller in callers
        for line in statements.compute(caller.department, OCTOBER)
        if line.kind == "tokens"
    ]
    assert charged == [Decimal("0.01")] * 3
    credits = [line.amount for line in statements.compute(team.department, OCTOBER) if line.kind == "credit"]
    assert credits == [Decimal("-0.03")]


def test_the_month_to_date_spend_adds_up_the_same_lines_as_the_drafts(october, team, other_team):
    from datetime import UTC, datetime

    from portfolio.billing.spend import month_to_date

    spend = month_to_date(datetime(2026, 10, 31, 23, 59, tzinfo=UTC))
    assert spend.of_department(other_team.department_id) == Decimal("10.75")
    assert spend.of_department(team.department_id) == Decimal("59.76")
    assert spend.of_team(other_team.pk) == Decimal("10.75")
    assert spend.team_tokens[other_team.pk] == Decimal("6.00")
    only = month_to_date(datetime(2026, 10, 31, 23, 59, tzinfo=UTC), department_ids=[team.department_id])
    assert set(only.departments) == {team.department_id}


def test_a_price_that_changes_in_the_middle_of_a_day_prices_each_hour_of_that_day(priced, team, other_team):
    # The day ledger holds the whole of 2026-10-20; at 14:00 the price doubles: 12:00 and 15:00 differ.
    from tests.billing.conftest import at, price

    price(
        "endpoint", 11, "router", at("2026-10-20 14:00"), input_per_million="1.00", output_per_million="6.00"
    )
    for hour in ("2026-10-20 12:00", "2026-10-20 15:00"):
        tokens(hour, endpoint_id=11, endpoint="router", owner=team, caller=other_team, tokens_out=1_000_000)
    output = [line for line in statements.compute(other_team.department, OCTOBER) if "output" in line.detail]
    assert [(line.unit_price, line.amount) for line in output] == [
        (Decimal("3.00"), Decimal("3.00")),  # 12:00, the price of 16 October on
        (Decimal("6.00"), Decimal("6.00")),  # 15:00, after the change at 14:00
    ]


def test_the_day_ledger_is_the_sum_of_its_hours_after_a_late_hour_is_rewritten(priced, team, other_team):
    from portfolio.billing.models import TokenDay

    tokens("2026-10-20 12:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team, tokens_in=5)
    tokens("2026-10-20 23:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team, tokens_in=7)
    tokens("2026-10-20 12:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team, tokens_in=9)
    day = TokenDay.objects.get()
    assert (day.day.isoformat(), day.requests, day.input_tokens) == ("2026-10-20T00:00:00+00:00", 2, 16)


def test_a_call_between_two_teams_of_one_department_is_token_spend_of_the_team_not_of_the_department(
    priced, team, other_team
):
    from datetime import UTC, datetime

    from portfolio.accounts.models import Team
    from portfolio.billing.spend import month_to_date

    sibling = Team.objects.create(department=team.department, name="Sibling", slug="sibling")
    tokens(
        "2026-10-10 10:00", endpoint_id=11, endpoint="router", owner=team, caller=sibling, tokens_in=2_000_000
    )
    tokens(
        "2026-10-10 10:00",
        endpoint_id=11,
        endpoint="router",
        owner=team,
        caller=other_team,
        tokens_in=1_000_000,
    )
    spend = month_to_date(datetime(2026, 10, 31, 23, 59, tzinfo=UTC))
    assert spend.team_tokens[sibling.pk] == Decimal("2.00")  # the team pays its sister team
    assert team.department_id not in spend.department_tokens  # ...which its department gets back
    assert spend.department_tokens[other_team.department_id] == Decimal("1.00")  # another department pays

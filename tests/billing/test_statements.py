"""A month of mixed usage across two departments, priced, closed, and corrected only by adjustment lines."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction

from portfolio.accounts.actor import Actor
from portfolio.audit.models import AuditEvent
from portfolio.billing import statements
from portfolio.billing.choices import ComputeKind, LineKind, PriceKind, StatementStatus
from portfolio.billing.models import Statement, StatementLine
from portfolio.errors import Conflict, Forbidden, Invalid
from tests.billing.conftest import compute, tokens
from tests.conftest import actor_for
from tests.interleave import Pause, interleave

OCTOBER, NOVEMBER = date(2026, 10, 1), date(2026, 11, 1)
BILLING = Actor.for_system("billing")


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


def test_a_closed_month_is_stored_hashed_into_the_audit_trail_and_never_changes(october, team, other_team):
    statement = statements.close(BILLING, other_team.department, OCTOBER)
    assert statement.total == Decimal("10.75") and statement.revision == 1
    assert statement.lines.count() == 6
    event = AuditEvent.objects.get(action="statement.close")
    assert event.after["sha256"] == statement.sha256 and event.after["total"] == "10.75"
    # A late call of October, after the close: the statement stays as it was.
    tokens(
        "2026-10-31 23:00",
        endpoint_id=11,
        endpoint="router",
        owner=team,
        caller=other_team,
        tokens_in=100_000,
    )
    statement.refresh_from_db()
    assert statement.total == Decimal("10.75")
    assert statements.month_of(other_team.department, OCTOBER).total == Decimal("10.75")


def test_late_usage_of_a_closed_month_goes_to_an_adjustment_line_of_the_next_one(october, team, other_team):
    for department in (team.department, other_team.department):
        statements.close(BILLING, department, OCTOBER)
    tokens(
        "2026-10-31 23:00",
        endpoint_id=11,
        endpoint="router",
        owner=team,
        caller=other_team,
        tokens_in=100_000,
    )

    caller = [
        line for line in statements.compute(other_team.department, NOVEMBER) if line.kind == "adjustment"
    ]
    owner = [line for line in statements.compute(team.department, NOVEMBER) if line.kind == "adjustment"]
    assert [(line.team_id, line.subject, line.amount) for line in caller] == [
        (other_team.pk, "2026-10", Decimal("0.05"))  # 0.1M input at October's second price
    ]
    assert [(line.team_id, line.subject, line.amount) for line in owner] == [
        (team.pk, "2026-10", Decimal("-0.05"))
    ]

    # Once November is closed with it, December has nothing left to adjust for October.
    november = statements.close(BILLING, other_team.department, NOVEMBER)
    assert november.lines.get(kind="adjustment").amount == Decimal("0.05")
    december = statements.compute(other_team.department, date(2026, 12, 1))
    assert [line for line in december if line.kind == "adjustment"] == []


def test_a_closed_statements_hash_is_recomputed_from_what_is_stored(october, team, other_team):
    """An auditor recomputes the hash from the stored lines (or an export of them): it used to hash numbers
    as computed ("0", "1.5"), which read back at their columns' places ("0.000000", "1.50"), so no one
    could check it. Tampering with a stored line is then seen."""
    for department in (team.department, other_team.department):
        closed = statements.close(BILLING, department, OCTOBER)
        stored = Statement.objects.get(pk=closed.pk)
        header = {
            "department": department.cost_center,
            "month": "2026-10",
            "revision": 1,
            "currency": stored.currency,
            "total": str(stored.total),
        }
        assert statements.digest(header, list(stored.lines.order_by("position"))) == stored.sha256
        assert statements.verify(stored)
        tampered = list(stored.lines.order_by("position"))
        tampered[0].amount += Decimal("0.01")
        assert statements.digest(header, tampered) != stored.sha256


def test_a_month_closes_once(october, other_team):
    statements.close(BILLING, other_team.department, OCTOBER)
    with pytest.raises(Conflict):
        statements.close(BILLING, other_team.department, OCTOBER)


def test_the_open_month_cannot_be_closed(other_team):
    from django.utils import timezone

    from portfolio.billing.money import month_start

    with pytest.raises(Invalid):
        statements.close(BILLING, other_team.department, month_start(timezone.now()))


def test_postgresql_refuses_to_change_or_remove_a_closed_statement_or_its_lines(october, other_team):
    statement = statements.close(BILLING, other_team.department, OCTOBER)
    for sql in (
        "UPDATE billing_statement SET total = 0 WHERE id = %s",
        "DELETE FROM billing_statement WHERE id = %s",
        "UPDATE billing_statementline SET amount = 0 WHERE statement_id = %s",
        "DELETE FROM billing_statementline WHERE statement_id = %s",
        "UPDATE billing_statement SET status = 'superseded', total = 0 WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="immutable"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [statement.pk])
    assert StatementLine.objects.filter(statement=statement).count() == 6


def test_an_admin_reissues_a_closed_statement_as_a_new_revision_with_a_reason(october, org, team, other_team):
    first = statements.close(BILLING, other_team.department, OCTOBER)
    tokens(
        "2026-10-31 23:00",
        endpoint_id=11,
        endpoint="router",
        owner=team,
        caller=other_team,
        tokens_in=100_000,
    )
    with pytest.raises(Invalid):
        statements.reissue(actor_for(org["admin"]), first, "   ")
    second = statements.reissue(actor_for(org["admin"]), first, "price book error corrected by finance")
    first.refresh_from_db()
    assert first.status == StatementStatus.SUPERSEDED and second.revision == 2
    assert second.total == Decimal("10.80") and second.sha256 != first.sha256
    event = AuditEvent.objects.get(action="statement.reissue")
    assert event.before["total"] == "10.75" and event.after["total"] == "10.80"
    assert event.after["reason"] == "price book error corrected by finance"
    assert Statement.objects.current().get(department=other_team.department, month=OCTOBER) == second
    with pytest.raises(Conflict):  # only the revision in force
        statements.reissue(actor_for(org["admin"]), first, "once more for good measure")


def test_reissuing_a_month_whose_late_usage_a_later_statement_adjusted_bills_it_once(
    october, org, team, other_team
):
    """October closed; late October usage went onto November's statement as an adjustment; then October is
    re-issued. Computed again from the ledger its charges hold that usage too: the re-issue credits what
    November already billed for October, and December finds nothing left to adjust."""
    first = statements.close(BILLING, other_team.department, OCTOBER)
    tokens("2026-10-31 23:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=100_000)  # fmt: skip
    november = statements.close(BILLING, other_team.department, NOVEMBER)
    assert november.lines.get(kind="adjustment").amount == Decimal("0.05")

    second = statements.reissue(actor_for(org["admin"]), first, "a price corrected by finance")

    credit = second.lines.get(kind="adjustment")
    assert (credit.team_id, credit.subject, credit.amount) == (other_team.pk, "2026-10", Decimal("-0.05"))
    assert second.total == first.total == Decimal("10.75")  # 10.80 of charges now, 0.05 billed in November
    billed = second.total + november.lines.get(kind="adjustment").amount
    assert billed == sum(line.amount for line in statements.compute(other_team.department, OCTOBER)
                         if line.kind != LineKind.ADJUSTMENT)  # fmt: skip
    december = statements.compute(other_team.department, date(2026, 12, 1))
    assert [line for line in december if line.kind == "adjustment"] == []


def test_a_reissue_keeps_the_adjustments_for_earlier_months_its_month_billed(october, org, team, other_team):
    """October carried September's late usage; November then carried more of it. Re-issuing October keeps
    its own adjustment for September as billed: computed again it would take in November's as well."""
    september = date(2026, 9, 1)
    statements.close(BILLING, other_team.department, september)
    compute("job:finetune:8:1", other_team, "2026-09-30 20:00", "2026-09-30 21:00", gpus=1,
            kind=ComputeKind.JOB, subject="fine-tune #8")  # fmt: skip
    first = statements.close(BILLING, other_team.department, OCTOBER)
    adjusted = first.lines.get(kind="adjustment")
    compute("job:finetune:9:1", other_team, "2026-09-30 21:00", "2026-09-30 23:00", gpus=1,
            kind=ComputeKind.JOB, subject="fine-tune #9")  # fmt: skip
    november = statements.close(BILLING, other_team.department, NOVEMBER)
    assert november.lines.get(kind="adjustment").amount == 2 * adjusted.amount

    again = statements.reissue(actor_for(org["admin"]), first, "a price corrected by finance")

    assert [(line.subject, line.amount) for line in again.lines.filter(kind="adjustment")] == [
        ("2026-09", adjusted.amount)
    ]
    assert again.total == first.total
    december = statements.compute(other_team.department, date(2026, 12, 1))
    assert [line for line in december if line.kind == "adjustment"] == []


@pytest.mark.parametrize("role", ["owner", "auditor", "engineer", "outsider"])
def test_only_admins_reissue(october, org, other_team, role):
    statement = statements.close(BILLING, other_team.department, OCTOBER)
    with pytest.raises(Forbidden):
        statements.reissue(actor_for(org[role]), statement, "a reason long enough")


def test_the_beat_task_closes_every_finished_month_oldest_first_and_only_after_the_grace(
    october, team, other_team, settings
):
    from datetime import UTC, datetime

    from portfolio.accounts.models import Department

    Department.objects.filter(pk__in=[team.department_id, other_team.department_id]).update(
        created_at=datetime(2026, 10, 3, tzinfo=UTC)
    )
    settings.BILLING_CLOSE_AFTER_HOURS = 6
    assert statements.close_finished(datetime(2026, 11, 1, 5, tzinfo=UTC)) == []
    closed = statements.close_finished(datetime(2026, 12, 1, 7, tzinfo=UTC))
    assert [(s.department.cost_center, s.month) for s in closed] == [
        ("CC-100", OCTOBER), ("CC-100", NOVEMBER), ("CC-200", OCTOBER), ("CC-200", NOVEMBER)
    ]  # fmt: skip
    assert statements.close_finished(datetime(2026, 12, 1, 8, tzinfo=UTC)) == []


def test_a_department_whose_close_fails_does_not_stop_the_departments_after_it(
    october, team, other_team, settings, monkeypatch, caplog
):
    from datetime import UTC, datetime

    from portfolio.accounts.models import Department

    Department.objects.filter(pk__in=[team.department_id, other_team.department_id]).update(
        created_at=datetime(2026, 10, 3, tzinfo=UTC)
    )
    settings.BILLING_CLOSE_AFTER_HOURS = 6
    close = statements.close

    def failing_for_the_first(actor, department, month):
        if department.pk == team.department_id:
            raise ValueError("lines cannot be computed")
        return close(actor, department, month)

    monkeypatch.setattr(statements, "close", failing_for_the_first)
    closed = statements.close_finished(datetime(2026, 12, 1, 7, tzinfo=UTC))
    assert [(s.department.cost_center, s.month) for s in closed] == [
        ("CC-200", OCTOBER),
        ("CC-200", NOVEMBER),
    ]
    assert not Statement.objects.filter(department_id=team.department_id).exists()
    assert "closing 2026-10 of CC-100 failed" in caplog.text
    assert "lines cannot be computed" in caplog.text


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


@pytest.mark.django_db(transaction=True)
def test_a_reissue_and_the_next_months_close_at_once_bill_late_usage_once(
    october, org, team, other_team, monkeypatch
):
    """The re-issue has computed October with its late usage (and found no later adjustment to credit) when
    November closes: November waits for it, then finds October billed and adjusts nothing. Without the
    department's lock November would adjust October for that usage too, billed twice."""
    first = statements.close(BILLING, other_team.department, OCTOBER)
    tokens("2026-10-31 23:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=100_000)  # fmt: skip
    pause = Pause()
    monkeypatch.setattr(statements, "_reissued_lines", pause.hook(statements._reissued_lines))

    reissued, closed = interleave(
        pause,
        lambda: statements.reissue(actor_for(org["admin"]), first, "a price corrected by finance"),
        lambda: statements.close(BILLING, other_team.department, NOVEMBER),
    )

    assert reissued.error is None and closed.error is None, (reissued.error, closed.error)
    october_now = Statement.objects.current().get(department=other_team.department, month=OCTOBER)
    adjusted = StatementLine.objects.filter(statement__month=NOVEMBER, kind="adjustment", subject="2026-10")
    billed = october_now.total + sum((line.amount for line in adjusted), Decimal(0))
    charges = [
        line for line in statements.compute(other_team.department, OCTOBER) if line.kind != "adjustment"
    ]
    assert billed == sum(line.amount for line in charges) == Decimal("10.80")


@pytest.mark.django_db(transaction=True)
def test_a_price_set_inside_a_month_as_it_closes_waits_and_is_refused(october, org, other_team, monkeypatch):
    """The close has computed October when an admin sets a price from 20 October: the price used to commit
    (its check of closed months could not see the statement not yet committed), leaving a version inside a
    closed month, billed later as an adjustment the close never saw coming. It waits, then is refused."""
    from portfolio.billing import services
    from portfolio.billing.models import Price
    from portfolio.billing.subjects import Subject

    pause = Pause()
    monkeypatch.setattr(statements, "compute", pause.hook(statements.compute))
    router = Subject(PriceKind.ENDPOINT, "11", "router")
    when = datetime(2026, 10, 20, tzinfo=UTC)
    closed, priced = interleave(
        pause,
        lambda: statements.close(BILLING, other_team.department, OCTOBER),
        lambda: services.set_price(
            actor=actor_for(org["admin"]), subject=router, effective_from=when, input_per_million="9.00"
        ),
    )
    assert closed.error is None, closed.error
    assert isinstance(priced.error, Invalid) and "already closed" in str(priced.error)
    assert not Price.objects.filter(effective_from=when).exists()


def test_the_forecast_does_not_extrapolate_adjustments_for_earlier_months(october, team, other_team):
    """On 2 November a 1.00 adjustment for October's late usage is in November's draft: it used to be
    projected over the month with the month's own charges (30.00 from 1.00), as if it recurred."""
    from portfolio.billing import overview
    from portfolio.billing.access import Reader

    statements.close(BILLING, other_team.department, OCTOBER)
    tokens("2026-10-25 10:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=2_000_000)  # fmt: skip
    spend = overview.month_spend(
        Reader(True, frozenset(), frozenset()), NOVEMBER, datetime(2026, 11, 2, tzinfo=UTC)
    )
    (row,) = [row for row in spend.departments if row.key == (other_team.department_id,)]
    assert row.spend == Decimal("1.00"), "the adjustment: November has no charges of its own yet"
    assert row.forecast == Decimal("1.00"), "not projected over the month"


def test_a_budgets_bar_leaves_out_adjustments_for_earlier_months(october, org, team, other_team, client):
    """November's draft holds a 1.00 adjustment for October's late usage. A budget measures the month's own
    spend (its alerts and hard limit leave adjustments out), so the overview's bar must too: it showed 1.00
    spent, half of a 2.00 budget, for a month with no spend of its own."""
    from portfolio.billing import budgets

    statements.close(BILLING, other_team.department, OCTOBER)
    tokens("2026-10-25 10:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=2_000_000)  # fmt: skip
    budgets.set_budget(actor=actor_for(org["admin"]), department=other_team.department, amount="2.00")
    client.force_login(org["admin"])
    page = client.get("/billing/?month=2026-11").content.decode()
    budgets_part = page[page.index('id="budgets-heading"') :]
    assert 'aria-label="0% of the budget used"' in budgets_part
    assert "1.00" not in budgets_part[: budgets_part.index("</table>")]

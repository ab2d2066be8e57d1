"""A month of mixed usage across two departments, priced, closed, and corrected only by adjustment lines.
What each line of a month charges is tests/billing/test_statement_lines.py."""

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
from tests.billing.conftest import NOVEMBER, OCTOBER, compute, tokens
from tests.conftest import actor_for
from tests.interleave import Pause, interleave

BILLING = Actor.for_system("billing")


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

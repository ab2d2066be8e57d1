"""Which month and amount an alert is of: spend landing after a month's last check still alerts that month
(once), early in the next; a threshold alerts once per amount, so raising the amount mid-month alerts the
new amount's thresholds, and lowering and raising it back sends nothing again."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.core import mail

from portfolio.audit.models import AuditEvent
from portfolio.billing import alerts, budgets
from portfolio.billing.models import Budget, BudgetAlert
from tests.billing.conftest import at
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


def test_spend_in_a_months_last_minutes_alerts_that_month_once_in_the_next(org, team, spent):
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="100",
        thresholds=[50],
        notify_emails=["fin@example.com"],
    )
    Budget.objects.update(updated_at=at("2026-10-01 00:00"))
    spent(team, "2026-10-31 22:00", 40)
    assert alerts.check(at("2026-10-31 23:55")) == [], "the month's last check: 40% of the budget"
    spent(team, "2026-10-31 23:00", 20)  # recorded at 23:58, after the month's last check
    (alert,) = alerts.check(at("2026-11-01 00:03"))
    assert (alert.month, alert.threshold, alert.spend) == (date(2026, 10, 1), 50, Decimal("60.00"))
    assert "its 2026-10 budget" in mail.outbox[0].subject
    assert AuditEvent.objects.get(action="budget.alert").after["month"] == "2026-10"
    assert alerts.check(at("2026-11-01 00:08")) == [], "sent once"
    assert len(mail.outbox) == 1
    stored = Budget.objects.get()
    assert (stored.spend_month, stored.token_spend) == (date(2026, 11, 1), Decimal("0.00")), (
        "the gateway reads the current month's spend"
    )


def test_a_budget_made_or_changed_in_a_months_first_hours_is_not_alerted_on_the_previous_month(
    org, team, spent
):
    """The previous month's spend was not against these terms: a team given its first budget at 02:00 on the
    1st was alerted that it had spent 100% of the month before's, and one whose amount was lowered on the
    1st had last month's thresholds sent again (found by review)."""
    spent(team, "2026-10-31 23:00", 90)
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="50",
        thresholds=[100],
        notify_emails=["f@example.com"],
    )
    Budget.objects.update(updated_at=at("2026-11-01 02:00"))
    assert alerts.check(at("2026-11-01 03:00")) == []
    assert mail.outbox == []


def test_a_raised_amount_alerts_its_thresholds_and_one_raised_back_does_not_again(org, team, spent):
    admin = actor_for(org["admin"])
    now, hour = at("2026-10-15 12:00"), "2026-10-15 10:00"
    budgets.set_budget(
        actor=admin, team=team, amount="100", thresholds=[80], notify_emails=["fin@example.com"]
    )
    spent(team, hour, 85)
    assert [(a.threshold, a.amount) for a in alerts.check(now)] == [(80, Decimal("100.00"))]
    budgets.set_budget(actor=admin, team=team, amount="200")
    assert alerts.check(now) == [], "85 is 42% of 200"
    spent(team, hour, 160)
    (alert,) = alerts.check(now)
    assert (alert.threshold, alert.amount, alert.spend) == (80, Decimal("200.00"), Decimal("160.00"))
    assert "is 200.00" in mail.outbox[-1].body
    assert AuditEvent.objects.filter(action="budget.alert").latest("pk").after["amount"] == "200.00"

    budgets.set_budget(actor=admin, team=team, amount="100")
    assert alerts.check(now) == [], "80% of 100 was alerted already this month"
    budgets.set_budget(actor=admin, team=team, amount="200")
    assert alerts.check(now) == [], "and 80% of 200 too"
    assert len(mail.outbox) == 2 and BudgetAlert.objects.count() == 2


def test_a_lowered_amount_sends_nothing_already_sent_at_a_higher_one(org, team, spent):
    """Lowering the amount, even by a cent, sent every threshold already crossed again (a team owner may
    always lower it: alerts on demand; found by review)."""
    admin = actor_for(org["admin"])
    now = at("2026-10-15 12:00")
    budgets.set_budget(
        actor=admin, team=team, amount="1000", thresholds=[50, 80], notify_emails=["f@example.com"]
    )
    spent(team, "2026-10-15 10:00", 850)
    assert len(alerts.check(now)) == 2
    budgets.set_budget(actor=admin, team=team, amount="999.99")
    assert alerts.check(now) == []
    budgets.set_budget(actor=admin, team=team, amount="500", thresholds=[50, 80, 100])
    assert [a.threshold for a in alerts.check(now)] == [100], "only the threshold not yet crossed"
    assert len(mail.outbox) == 3


def test_an_alert_of_a_month_that_has_ended_says_it_was_spent_not_spent_so_far(org, team, spent, settings):
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="100",
        thresholds=[50, 80],
        notify_emails=["fin@example.com"],
    )
    Budget.objects.update(updated_at=at("2026-10-01 00:00"))
    spent(team, "2026-10-15 10:00", 60)
    alerts.check(at("2026-10-15 12:00"))
    assert (
        f"60.00 {settings.BILLING_CURRENCY} is spent in 2026-10 so far (50% threshold)" in mail.outbox[0].body
    )
    spent(team, "2026-10-31 23:00", 25)
    (alert,) = alerts.check(at("2026-11-01 00:03"))
    assert (alert.month, alert.threshold) == (date(2026, 10, 1), 80)
    body = mail.outbox[1].body
    assert f"85.00 {settings.BILLING_CURRENCY} was spent in 2026-10 (80% threshold)" in body
    assert "so far" not in body

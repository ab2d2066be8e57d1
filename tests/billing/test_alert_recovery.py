"""Alerts left undelivered: a check that stopped between making an alert's row and delivering it (a worker
killed or restarted) left it never sent. A later check delivers it once, late, and audits it as late; two
checks at once still deliver it once; one being delivered, claimed, failed or a week old is left alone."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pytest
from django.core import mail
from django.db import connection

from portfolio.audit.models import AuditEvent
from portfolio.billing import alerts, budgets
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Budget, BudgetAlert
from tests.billing.conftest import at, price, tokens
from tests.billing.receivers import fixture_receiver  # noqa: F401 - the receiver fixture
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ENDPOINT_ID = 4545


@pytest.fixture(autouse=True)
def _private_hooks(settings):
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True  # the receiver listens on 127.0.0.1


@pytest.fixture
def spent(other_team):
    """``spent(team, hour, money)``: ``team``'s calls to other_team's endpoint in ``hour`` cost ``money``."""
    price(PriceKind.ENDPOINT, ENDPOINT_ID, "contracts-llm", input_per_million=1_000_000)

    def spend(team, hour: str, money: int) -> None:
        tokens(hour, endpoint_id=ENDPOINT_ID, endpoint="contracts-llm", owner=other_team, caller=team,
               tokens_in=money)  # fmt: skip

    return spend


class WorkerKilled(BaseException):
    """What a worker's death looks like to the check: nothing after it runs."""


def left_undelivered(monkeypatch, as_of: str) -> None:
    """A check at ``as_of`` that makes its alerts' rows and stops before delivering any."""

    def die(*args, **kwargs):
        raise WorkerKilled

    with monkeypatch.context() as patched:
        patched.setattr(alerts, "_deliver", die)
        with pytest.raises(WorkerKilled):
            alerts.check(at(as_of))
    BudgetAlert.objects.update(sent_at=at(as_of))  # made at the check's time, not the test's


def test_an_alert_left_undelivered_is_delivered_once_late_by_a_later_check(
    org, team, spent, receiver, monkeypatch
):
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="100",
        thresholds=[50],
        notify_emails=["fin@example.com"],
        webhook_url=receiver.url,
    )
    spent(team, "2026-10-15 10:00", 60)
    left_undelivered(monkeypatch, "2026-10-15 12:00")
    assert BudgetAlert.objects.get().delivery == {} and mail.outbox == []

    assert alerts.check(at("2026-10-15 12:15")) == [], "it may still be under way"
    (alert,) = alerts.check(at("2026-10-15 12:25"))
    assert (alert.threshold, alert.spend) == (50, 60)
    assert [message.to for message in mail.outbox] == [["fin@example.com"]]
    assert "is spent in 2026-10 so far" in mail.outbox[0].body
    assert len(receiver.received) == 1
    delivery = {"email": "sent", "webhook": "sent: HTTP 204"}
    assert BudgetAlert.objects.get().delivery == delivery
    audited = AuditEvent.objects.get(action="budget.alert").after or {}
    assert audited["delivery"] == delivery
    assert audited["delivered_late_at"] == at("2026-10-15 12:25").isoformat()
    assert audited["sent_at"] == at("2026-10-15 12:00").isoformat()

    assert alerts.check(at("2026-10-15 12:30")) == [], "delivered once"
    assert len(mail.outbox) == 1 and len(receiver.received) == 1


def test_a_left_alert_of_a_month_that_has_ended_says_it_was_spent(org, team, spent, monkeypatch):
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="100",
        thresholds=[50],
        notify_emails=["fin@example.com"],
    )
    Budget.objects.update(updated_at=at("2026-10-01 00:00"))
    spent(team, "2026-10-31 22:00", 60)
    left_undelivered(monkeypatch, "2026-10-31 23:50")
    (alert,) = alerts.check(at("2026-11-01 00:20"))
    assert alert.month == date(2026, 10, 1)
    assert "was spent in 2026-10 (50% threshold)" in mail.outbox[0].body
    assert "so far" not in mail.outbox[0].body


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_deliver_a_left_alert_once(org, team, spent, monkeypatch):
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="10",
        thresholds=[10, 20, 30],
        notify_emails=["fin@example.com"],
    )
    spent(team, "2026-10-15 10:00", 9)
    for _ in range(3):  # each stopped check leaves one row: the next threshold's
        left_undelivered(monkeypatch, "2026-10-15 12:00")
    assert [a.delivery for a in BudgetAlert.objects.all()] == [{}, {}, {}]
    barrier = threading.Barrier(4)
    results: list[int] = []

    def run():
        try:
            barrier.wait()
            results.append(len(alerts.check(at("2026-10-15 12:30"))))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 3 and len(mail.outbox) == 3
    assert AuditEvent.objects.filter(action="budget.alert").count() == 3


@pytest.mark.parametrize(
    ("delivery", "made"),
    [
        ({"claimed": "2026-10-15T12:20:00+00:00"}, "2026-10-15 12:00"),  # its claimant stopped too
        ({"email": "failed: 1 of 1 not sent: SMTPServerDisconnected"}, "2026-10-15 12:00"),
        ({}, "2026-10-08 11:00"),  # more than a week ago: no longer news
    ],
)
def test_an_alert_claimed_failed_or_stale_is_not_delivered(org, team, spent, delivery, made):
    budget = budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="100",
        thresholds=[50],
        notify_emails=["fin@example.com"],
    )
    spent(team, "2026-10-15 10:00", 60)
    BudgetAlert.objects.create(
        budget=budget,
        month=date(2026, 10, 1),
        threshold=50,
        amount=budget.amount,
        spend=60,
        sent_at=at(made),
        delivery=delivery,
    )
    assert alerts.check(at("2026-10-15 12:30")) == []
    assert mail.outbox == [] and BudgetAlert.objects.get().delivery == delivery


def test_the_margin_outlasts_the_longest_delivery():
    """A delivery still under way must never be taken for one left undelivered (alerts.py says why), at the
    largest EMAIL_TIMEOUT (120 s) and BILLING_WEBHOOK_TIMEOUT (30 s) the settings accept."""
    exchange = timedelta(seconds=120)
    webhook = timedelta(seconds=30 + 1 + 5)
    last_message = alerts.MAIL_WINDOW + (4 + 1) * exchange  # begun as the window ends; then the goodbye
    slow_opening = (6 + 1) * exchange  # past the window: nothing begun; then the goodbye
    assert max(last_message, slow_opening) + webhook < alerts.UNDELIVERED_AFTER

"""Alerts left behind by a check that stopped (a worker killed or restarted). One never begun was never sent: a
later check delivers it once, late, and audits it as late; two checks at once still deliver it once. One
begun may have reached some recipients: it is recorded as interrupted, never sent twice (found by review: a
check killed mid-delivery, or failing to record its outcome, had everything sent again). A failed one, or one
a week old, is left alone."""

from __future__ import annotations

import threading
from datetime import date

import pytest
from django.core import mail
from django.core.mail import EmailMessage
from django.db import connection

from portfolio.audit.models import AuditEvent
from portfolio.billing import alerts
from portfolio.billing.models import Budget, BudgetAlert
from tests.billing.conftest import at, team_budget
from tests.billing.receivers import fixture_receiver  # noqa: F401 - the receiver fixture

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _private_hooks(settings):
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True  # the receiver listens on 127.0.0.1


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
    team_budget(org, team, webhook_url=receiver.url)
    spent(team, "2026-10-15 10:00", 60)
    left_undelivered(monkeypatch, "2026-10-15 12:00")
    assert "pending" in BudgetAlert.objects.get().delivery and mail.outbox == []

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


@pytest.mark.parametrize(
    ("made", "says"),
    [
        ("2026-10-31 23:50", "is spent in 2026-10 so far"),  # found by review: it said "was spent"
        ("2026-11-01 00:10", "was spent in 2026-10"),  # a previous month's alert, early in the next
    ],
)
def test_a_late_alert_says_what_was_spent_when_its_row_was_made(org, team, spent, monkeypatch, made, says):
    team_budget(org, team)
    Budget.objects.update(updated_at=at("2026-10-01 00:00"))
    spent(team, "2026-10-31 22:00", 60)
    left_undelivered(monkeypatch, made)
    (alert,) = alerts.check(at("2026-11-01 00:40"))
    assert alert.month == date(2026, 10, 1)
    assert f"{says} (50% threshold)" in mail.outbox[0].body


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_deliver_a_left_alert_once(org, team, spent, monkeypatch):
    team_budget(org, team, "10", (10, 20, 30))
    spent(team, "2026-10-15 10:00", 9)
    for _ in range(3):  # each stopped check leaves one row: the next threshold's
        left_undelivered(monkeypatch, "2026-10-15 12:00")
    assert all("pending" in a.delivery for a in BudgetAlert.objects.all())
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
        ({"email": "failed: 1 of 1 not sent: SMTPServerDisconnected"}, "2026-10-15 12:00"),
        (
            {"pending": "2026-10-08T11:00:00+00:00"},
            "2026-10-08 11:00",
        ),  # more than a week ago: no longer news
        ({"sending": "2026-10-15T12:20:00+00:00"}, "2026-10-15 12:20"),  # under way
        ({"sending": "2026-10-15T12:25:00+00:00"}, "2026-10-15 12:00"),  # a late delivery under way
    ],
)
def test_an_alert_failed_stale_or_under_way_is_left_alone(org, team, spent, delivery, made):
    budget = team_budget(org, team)
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


def stopped_while_delivering(monkeypatch, as_of: str, where: str) -> None:
    """A check at ``as_of`` that stops after its alert's delivery began: after the first e-mail went, or while
    recording how it went."""
    sends = EmailMessage.send

    def first_then_die(self, *args, **kwargs):
        if mail.outbox:
            raise WorkerKilled
        return sends(self, *args, **kwargs)

    def die(*args, **kwargs):
        raise WorkerKilled

    with monkeypatch.context() as patched:
        if where == "mid-delivery":
            patched.setattr(EmailMessage, "send", first_then_die)
        else:
            patched.setattr(alerts.audit, "record", die)
        with pytest.raises(WorkerKilled):
            alerts.check(at(as_of))
    BudgetAlert.objects.update(sent_at=at(as_of))


@pytest.mark.parametrize("where", ["mid-delivery", "recording"])
def test_an_alert_whose_delivery_began_is_recorded_interrupted_not_sent_again(
    org, team, spent, receiver, monkeypatch, where
):
    team_budget(org, team, "100", (50,), ("a@example.com", "b@example.com"), webhook_url=receiver.url)
    spent(team, "2026-10-15 10:00", 60)
    stopped_while_delivering(monkeypatch, "2026-10-15 12:00", where)
    went, posted = len(mail.outbox), len(receiver.received)
    assert went >= 1 and "sending" in BudgetAlert.objects.get().delivery

    assert alerts.check(at("2026-10-15 12:25")) == []

    assert (len(mail.outbox), len(receiver.received)) == (went, posted), "sent again"
    assert BudgetAlert.objects.get().delivery == {"email": alerts.INTERRUPTED}
    audited = AuditEvent.objects.get(action="budget.alert").after or {}
    assert audited["delivery"] == {"email": alerts.INTERRUPTED} and audited["threshold"] == 50
    assert (
        alerts.check(at("2026-10-15 12:30")) == []
        and AuditEvent.objects.filter(action="budget.alert").count() == 1
    )


def test_an_alert_made_before_delivery_was_recorded_in_steps_counts_as_begun(org, team, spent):
    """``{}`` was every row's delivery until its outcome was recorded: it may have been sent in part."""
    budget = team_budget(org, team, "100", (50,), ("f@example.com",))
    spent(team, "2026-10-15 10:00", 60)
    BudgetAlert.objects.create(
        budget=budget, month=date(2026, 10, 1), threshold=50, amount=budget.amount, spend=60,
        sent_at=at("2026-10-15 12:00"), delivery={},
    )  # fmt: skip
    assert alerts.check(at("2026-10-15 12:30")) == [] and mail.outbox == []
    assert BudgetAlert.objects.get().delivery == {"email": alerts.INTERRUPTED}

"""Budget alerts: each threshold alerts once a month, by e-mail and by a webhook whose body is signed;
both audited with how the delivery went; a failed delivery is recorded, never crashes the check and is
never sent again; two checks at once still send one alert."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.core import mail
from django.db import connection
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.billing import alerts, budgets, meters, money
from portfolio.billing.choices import PriceKind
from portfolio.billing.meters import TokenHour
from portfolio.billing.models import Budget, BudgetAlert, Price
from portfolio.billing.tasks import check_budgets
from tests.billing.receivers import Receiver, fixture_receiver  # noqa: F401 - the receiver fixture
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ENDPOINT_ID = 4242  # another team's endpoint: its calls are charged to the caller


@pytest.fixture(autouse=True)
def _private_hooks(settings):
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True  # the test's receiver listens on 127.0.0.1


@pytest.fixture
def priced(other_team):
    """One money unit per input token on other_team's endpoint, since long ago."""
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(ENDPOINT_ID),
        subject_name="contracts-llm",
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        input_per_million=Decimal("1000000"),
        output_per_million=Decimal("0"),
    )


def spend(team, other_team, tokens: int) -> None:
    """``team`` has called other_team's endpoint for ``tokens`` (money) this hour."""
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    meters.replace_token_hours(
        hour,
        hour + timedelta(hours=1),
        [TokenHour(hour, ENDPOINT_ID, "contracts-llm", other_team.pk, other_team.department_id, "contracts-dep",
                   team.pk, team.department_id, 1, tokens, 0)],
    )  # fmt: skip


@pytest.fixture
def budget(org, team, receiver, priced):
    return budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="100",
        thresholds=[50, 80, 100],
        notify_emails=["finance@example.com"],
        webhook_url=receiver.url,
    )


def test_each_threshold_alerts_once_a_month_by_email_and_signed_webhook(budget, team, other_team, receiver):
    spend(team, other_team, 60)
    assert check_budgets.apply().get() == 1, "the beat task sends the one threshold crossed"
    assert [a.threshold for a in BudgetAlert.objects.all()] == [50]
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["finance@example.com"]
    assert "50%" in mail.outbox[0].subject
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    expected = "sha256=" + hmac.new(settings.WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Portfolio-Signature"], expected)
    payload = json.loads(body)
    assert (payload["threshold"], payload["spend"], payload["team"]) == (50, "60.00", team.slug)

    assert alerts.check() == [], "the same spend alerts nothing again"
    spend(team, other_team, 85)
    assert [a.threshold for a in alerts.check()] == [80]
    spend(team, other_team, 130)
    assert [a.threshold for a in alerts.check()] == [100]
    assert alerts.check() == []
    assert len(mail.outbox) == 3 and len(receiver.received) == 3
    audits = AuditEvent.objects.filter(action="budget.alert").order_by("pk")
    assert [e.after["threshold"] for e in audits] == [50, 80, 100]
    assert all(e.after["delivery"] == {"email": "sent", "webhook": "sent: HTTP 204"} for e in audits)


def test_the_check_stores_the_months_spend_for_the_gateway(budget, team, other_team):
    spend(team, other_team, 30)
    alerts.check()
    stored = Budget.objects.get()
    assert stored.spend_month == money.month_start(timezone.now())
    assert (stored.token_spend, stored.other_spend) == (Decimal("30.00"), Decimal("0.00"))


def test_a_failed_webhook_is_recorded_and_never_sent_again(org, team, other_team, priced):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    budgets.set_budget(
        actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50], webhook_url=url
    )
    spend(team, other_team, 6)
    (alert,) = alerts.check()
    assert alert.delivery["webhook"].startswith("failed:")
    assert BudgetAlert.objects.get().delivery["webhook"].startswith("failed:")
    assert AuditEvent.objects.get(action="budget.alert").after["delivery"]["webhook"].startswith("failed:")
    assert alerts.check() == [], "a failed threshold is not re-sent"


def test_a_webhook_answering_an_error_is_recorded_as_failed(org, team, other_team, priced):
    server = Receiver(status=500)
    try:
        budgets.set_budget(
            actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50], webhook_url=server.url
        )
        spend(team, other_team, 6)
        (alert,) = alerts.check()
    finally:
        server.close()
    assert alert.delivery["webhook"] == "failed: HTTP 500"


def test_a_department_budget_alerts_on_its_teams_spend(org, department, team, other_team, priced):
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        department=department,
        amount="10",
        thresholds=[100],
        notify_emails=["cfo@example.com"],
    )
    spend(team, other_team, 10)
    (alert,) = alerts.check()
    assert alert.threshold == 100 and alert.spend == Decimal("10.00")
    assert "department CC-100" in mail.outbox[0].subject


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_send_each_threshold_once(org, team, other_team, priced):
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="10",
        thresholds=[10, 20, 30, 40, 50],
        notify_emails=["finance@example.com"],
    )
    spend(team, other_team, 9)
    barrier = threading.Barrier(4)
    results: list[int] = []

    def run():
        try:
            barrier.wait()
            results.append(len(alerts.check()))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 5 and BudgetAlert.objects.count() == 5
    assert len(mail.outbox) == 5


def test_a_webhook_that_now_points_inside_is_not_called(org, team, other_team, receiver, priced, settings):
    budgets.set_budget(
        actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50], webhook_url=receiver.url
    )
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = False  # as in production: the address is checked again
    spend(team, other_team, 6)
    (alert,) = alerts.check()
    assert alert.delivery["webhook"].startswith("failed: the host is an internal address")
    assert receiver.received == []

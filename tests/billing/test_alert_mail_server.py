"""A budget alert's e-mail in production without a mail server: a backend that delivers nothing (the console,
Django's default without EMAIL_HOST; locmem, dummy, filebased) is recorded as not delivered with the reason,
warned about once, never retried, and the webhook still goes. Outside production (make run, the tests) the
console's messages are read in the log, so they count as sent."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend

from portfolio.audit.models import AuditEvent
from portfolio.billing import alerts, budgets
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import BudgetAlert
from tests.billing.conftest import price, tokens
from tests.billing.receivers import Receiver, fixture_receiver  # noqa: F401 - the receiver fixture
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ENDPOINT_ID = 4545
CONSOLE = "django.core.mail.backends.console.EmailBackend"
NOT_DELIVERED = "failed: not delivered: no mail server configured (set EMAIL_HOST)"
RELAYED: list = []


class RelayBackend(BaseEmailBackend):
    """Stands for a real mail server (SMTP, or a provider's backend): it keeps what it was handed."""

    def send_messages(self, messages):
        RELAYED.extend(messages)
        return len(messages)


@pytest.fixture(autouse=True)
def _private_hooks(settings):
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True  # the receiver listens on 127.0.0.1
    settings.BILLING_WEBHOOK_HOSTS = ["127.0.0.1"]  # production calls listed hosts only
    settings.BILLING_ALERT_EMAIL_DOMAINS = ["example.com"]  # and e-mails listed domains only


@pytest.fixture
def alerting(org, team, other_team, receiver):
    """A 10-money budget alerting finance@ and the receiver at 50%, with 6 spent this hour."""
    price(PriceKind.ENDPOINT, ENDPOINT_ID, "contracts-llm", input_per_million=1_000_000)
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="10",
        thresholds=[50],
        notify_emails=["finance@example.com"],
        webhook_url=receiver.url,
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    tokens(f"{hour:%Y-%m-%d %H:%M}", endpoint_id=ENDPOINT_ID, endpoint="contracts-llm", owner=other_team,
           caller=team, tokens_in=6)  # fmt: skip


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "mail server" in r.getMessage()
    ]


def test_in_production_the_console_backend_is_no_mail_server_and_the_webhook_still_goes(
    alerting, receiver, settings, capsys, caplog
):
    settings.PRODUCTION, settings.EMAIL_BACKEND = True, CONSOLE
    caplog.set_level(logging.WARNING, logger="portfolio.billing.alerts")
    (alert,) = alerts.check()
    assert alert.delivery["email"].startswith(NOT_DELIVERED), "recorded as sent"
    expected = {"email": alerts.NO_MAIL_SERVER.format(CONSOLE), "webhook": "sent: HTTP 204"}
    assert alert.delivery == expected
    assert "[Portfolio]" not in capsys.readouterr().out, "the message was written to stdout as if sent"
    assert AuditEvent.objects.get(action="budget.alert").after["delivery"] == expected
    assert len(receiver.received) == 1
    assert len(_warnings(caplog)) == 1

    # Final, like any failure: a later check, past the time a pending alert is retried, sends nothing again.
    later = datetime.now(UTC) + alerts.UNDELIVERED_AFTER + timedelta(minutes=1)
    assert alerts.check(as_of=later) == []
    assert BudgetAlert.objects.get().delivery == expected
    assert len(receiver.received) == 1 and len(_warnings(caplog)) == 1
    assert AuditEvent.objects.filter(action="budget.alert").count() == 1


@pytest.mark.parametrize("backend", ["locmem", "dummy", "filebased"])
def test_in_production_the_other_undelivering_backends_are_no_mail_server(
    alerting, settings, tmp_path, backend
):
    settings.PRODUCTION = True
    settings.EMAIL_BACKEND = f"django.core.mail.backends.{backend}.EmailBackend"
    settings.EMAIL_FILE_PATH = str(tmp_path)
    (alert,) = alerts.check()
    assert alert.delivery["email"].startswith(NOT_DELIVERED), "recorded as sent"
    assert alert.delivery["email"] == alerts.NO_MAIL_SERVER.format(settings.EMAIL_BACKEND)
    assert mail.outbox == [] and list(tmp_path.iterdir()) == []


def test_in_production_a_mail_server_sends(alerting, settings):
    settings.PRODUCTION, settings.EMAIL_BACKEND = True, f"{__name__}.RelayBackend"
    RELAYED.clear()
    (alert,) = alerts.check()
    assert alert.delivery == {"email": "sent", "webhook": "sent: HTTP 204"}
    assert [message.to for message in RELAYED] == [["finance@example.com"]]


def test_outside_production_console_emails_count_as_sent(alerting, settings, capsys, caplog):
    settings.PRODUCTION, settings.EMAIL_BACKEND = False, CONSOLE
    (alert,) = alerts.check()
    assert alert.delivery == {"email": "sent", "webhook": "sent: HTTP 204"}
    assert "[Portfolio] team" in capsys.readouterr().out, "make run reads the alert in its log"
    assert _warnings(caplog) == []

"""A failed budget webhook is logged by its host only: Slack's and Teams' webhook URLs carry their
credentials in the path or the query, and the whole URL in the log handed them to whoever reads the logs
(found by review)."""

from __future__ import annotations

import logging
import socket

from portfolio.billing import webhooks
from tests.billing.test_webhook_deadline import drip  # noqa: F401 - the fixture

SECRET = "T0000/B0000/XXXXsecretXXXX"


def test_a_failed_delivery_logs_the_host_and_not_the_secret_in_the_url(settings, caplog):
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True  # nothing listens on the port: the delivery fails
    with socket.socket() as closed, caplog.at_level(logging.WARNING, logger="portfolio.billing.webhooks"):
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused, and no other process can take the port
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/services/{SECRET}?sig=querysecret"
        outcome = webhooks.post(url, {"event": "budget.alert"})
    assert outcome.startswith("failed:")
    assert "127.0.0.1" in caplog.text
    assert SECRET not in caplog.text and "querysecret" not in caplog.text and "/services" not in caplog.text


def test_a_delivery_cut_at_its_deadline_logs_the_host_only(settings, caplog, drip):  # noqa: F811
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True
    settings.BILLING_WEBHOOK_TIMEOUT = 1
    with caplog.at_level(logging.WARNING, logger="portfolio.billing.webhooks"):
        assert webhooks.post(drip, {"event": "budget.alert"}) == "failed: no whole answer within 1 s"
    assert "127.0.0.1" in caplog.text and "/hook" not in caplog.text

"""Where budget alerts may go: "nothing leaves the building" unless an admin says where. A team owner could point
the webhook at any public host (https://hooks.saas-vendor.com/...) and the e-mails at any address
(someone@gmail.com); only internal hosts were refused. PORTFOLIO_BILLING_WEBHOOK_HOSTS and
PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS, when set, are all they may go to; unset, production takes no webhook and no
address typed in (the owners' own addresses still get the alerts), and outside production today's rules hold."""

from __future__ import annotations

import socket

import pytest
from django.urls import reverse

from portfolio.billing import alerts, budgets, webhooks
from portfolio.billing.models import Budget
from portfolio.errors import Invalid
from tests.billing.receivers import fixture_receiver  # noqa: F401 - the receiver fixture
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db
API = "/api/v1/billing/budgets"
OUTSIDE = "https://hooks.saas-vendor.com/services/T0/B0/x"


def set_hook(org, team, url: str) -> Budget:
    return budgets.set_budget(actor=actor_for(org["owner"]), team=team, amount="10", webhook_url=url)


def set_emails(org, team, emails: list[str]) -> Budget:
    return budgets.set_budget(actor=actor_for(org["owner"]), team=team, amount="10", notify_emails=emails)


def test_a_webhook_to_a_host_not_listed_is_refused_naming_the_setting(org, team, settings):
    settings.BILLING_WEBHOOK_HOSTS = ["hooks.example.internal", ".corp.example"]
    with pytest.raises(Invalid, match="PORTFOLIO_BILLING_WEBHOOK_HOSTS") as refused:
        set_hook(org, team, OUTSIDE)
    assert str(refused.value).startswith("webhook_url: hooks.saas-vendor.com")
    for url in (
        "https://evilcorp.example/x",
        "https://corp.example.attacker.com/x",
        "https://example.internal/",
    ):
        with pytest.raises(Invalid, match="PORTFOLIO_BILLING_WEBHOOK_HOSTS"):
            set_hook(org, team, url)
    assert not Budget.objects.exists()


def test_listed_hosts_and_the_hosts_of_a_listed_domain_are_taken(org, team, settings):
    settings.BILLING_WEBHOOK_HOSTS = ["Hooks.Example.Internal", ".corp.example"]
    for url in (
        "https://hooks.example.internal/budget",
        "https://HOOKS.example.internal./budget",
        "https://alerts.finance.corp.example/x",
        "https://corp.example/x",
    ):
        assert set_hook(org, team, url).webhook_url == url


def test_in_production_an_unset_list_refuses_every_webhook(org, team, settings):
    settings.PRODUCTION, settings.BILLING_WEBHOOK_HOSTS = True, []
    with pytest.raises(Invalid, match="off in production until PORTFOLIO_BILLING_WEBHOOK_HOSTS"):
        set_hook(org, team, OUTSIDE)
    assert set_hook(org, team, "").webhook_url == ""  # none is still a choice


def test_outside_production_an_unset_list_keeps_the_rules_as_they_were(org, team, settings):
    settings.PRODUCTION, settings.BILLING_WEBHOOK_HOSTS = False, []
    assert set_hook(org, team, OUTSIDE).webhook_url == OUTSIDE
    with pytest.raises(Invalid, match="this host is internal"):
        set_hook(org, team, "https://10.20.30.40/alerts")


def test_a_listed_internal_host_is_called_though_private_hosts_are_off(org, team, settings, receiver):
    """The list names the company's own receivers: one at an internal address is set and reached even with
    PORTFOLIO_BILLING_WEBHOOK_PRIVATE_HOSTS false, which still keeps every other internal host out."""
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS, settings.BILLING_WEBHOOK_HOSTS = False, ["localhost"]
    url = f"http://localhost:{receiver.port}/hook"
    budget = set_hook(org, team, url)
    assert webhooks.post(budget.webhook_url, {"event": "budget.alert"}) == "sent: HTTP 204"
    assert len(receiver.received) == 1
    with pytest.raises(Invalid):
        set_hook(org, team, f"http://127.0.0.1:{receiver.port}/hook")


def test_delivery_does_not_call_a_url_set_before_the_list(org, team, settings, monkeypatch):
    """A webhook set while any public host was taken (or before an upgrade) is not called once the list
    leaves its host out: the delivery asks again, before looking the host up."""
    settings.BILLING_WEBHOOK_HOSTS = []
    budget = set_hook(org, team, OUTSIDE)
    looked_up = []
    monkeypatch.setattr(webhooks.socket, "getaddrinfo", lambda host, *a, **k: looked_up.append(host) or [])
    settings.BILLING_WEBHOOK_HOSTS = ["hooks.example.internal"]
    outcome = webhooks.post(budget.webhook_url, {"event": "budget.alert", "team": team.slug})
    assert outcome.startswith("failed: hooks.saas-vendor.com is not a host PORTFOLIO_BILLING_WEBHOOK_HOSTS")
    settings.BILLING_WEBHOOK_HOSTS, settings.PRODUCTION = [], True
    assert "off in production" in webhooks.post(budget.webhook_url, {"event": "budget.alert"})
    assert looked_up == []


def test_a_listed_host_that_resolves_inside_is_connected_to(settings, monkeypatch):
    seen = []

    class Stop(OSError):
        pass

    def connect(self, address):
        seen.append(address)
        raise Stop("stopped by the test")

    monkeypatch.setattr(
        webhooks.socket,
        "getaddrinfo",
        lambda host, port, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))],
    )
    monkeypatch.setattr(webhooks.socket.socket, "connect", connect)
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS, settings.BILLING_WEBHOOK_HOSTS = False, [".corp.example"]
    outcome = webhooks.post("https://hooks.corp.example/x", {"event": "budget.alert"})
    assert "stopped by the test" in outcome  # not "the host is an internal address; not called"
    assert seen == [("10.1.2.3", 443)]


def test_addresses_outside_the_listed_domains_are_refused(org, team, settings):
    settings.BILLING_ALERT_EMAIL_DOMAINS = ["example.com", ".corp.example"]
    with pytest.raises(Invalid, match="PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS") as refused:
        set_emails(org, team, ["fin@example.com", "someone@gmail.com"])
    assert str(refused.value).startswith("notify_emails: 'someone@gmail.com'")
    with pytest.raises(Invalid, match="PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS"):
        set_emails(org, team, ["x@sub.example.com"])  # example.com is that domain only
    taken = ["fin@example.com", "ops@Finance.Corp.Example", "cfo@corp.example"]
    assert set_emails(org, team, taken).notify_emails == taken


def test_in_production_an_unset_list_takes_no_address_but_the_owners_still_get_alerts(org, team, settings):
    settings.PRODUCTION, settings.BILLING_ALERT_EMAIL_DOMAINS = True, []
    with pytest.raises(Invalid, match="until PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS"):
        set_emails(org, team, ["someone@gmail.com"])
    budget = set_emails(org, team, [])
    org["owner"].email = "owner@company.example"
    org["owner"].save(update_fields=["email"])
    assert alerts._recipients(budget) == ["owner@company.example"]


def test_delivery_does_not_mail_an_address_set_before_the_list_and_alerts_the_owners_instead(
    org, team, settings
):
    """An address typed in while any domain was taken (or before an upgrade) gets no alert once the list
    leaves its domain out: the delivery asks again. Without an address still allowed, the team's owners get
    it (as a budget without addresses), and the delivery record says how many were held back."""
    settings.BILLING_ALERT_EMAIL_DOMAINS = []
    budget = set_emails(org, team, ["someone@gmail.com", "fin@example.com"])
    org["owner"].email = "owner@company.example"
    org["owner"].save(update_fields=["email"])
    settings.BILLING_ALERT_EMAIL_DOMAINS = ["example.com"]
    assert alerts._recipients(budget) == ["fin@example.com"]
    settings.BILLING_ALERT_EMAIL_DOMAINS = ["company.example"]
    assert alerts._recipients(budget) == ["owner@company.example"]
    settings.BILLING_ALERT_EMAIL_DOMAINS, settings.PRODUCTION = [], True
    assert alerts._recipients(budget) == ["owner@company.example"]


def test_the_delivery_record_counts_the_addresses_held_back(org, team, settings, monkeypatch):
    from decimal import Decimal

    from django.core import mail
    from django.utils import timezone

    from portfolio.billing.models import BudgetAlert

    budget = set_emails(org, team, ["someone@gmail.com", "fin@example.com"])
    settings.BILLING_ALERT_EMAIL_DOMAINS = ["example.com"]
    now = timezone.now()
    alert = BudgetAlert.objects.create(
        budget=budget, month=now.date().replace(day=1), threshold=80, spend=Decimal("8"), amount=Decimal("10"),
        sent_at=now, delivery={"pending": True},
    )  # fmt: skip
    assert alerts._deliver(budget, alert, now)
    alert.refresh_from_db()
    assert [message.to for message in mail.outbox] == [["fin@example.com"]]
    assert alert.delivery == {
        "email": "sent",
        "email_held": "1 address(es) typed in, outside PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS",
    }


def test_the_api_refuses_in_its_error_shape_and_the_form_next_to_the_field(client, org, team, settings):
    settings.BILLING_WEBHOOK_HOSTS = ["hooks.example.internal"]
    settings.BILLING_ALERT_EMAIL_DOMAINS = ["example.com"]
    client.force_login(org["owner"])
    url = f"{API}/teams/{team.pk}"
    hook = client.put(url, {"amount": "10", "webhook_url": OUTSIDE}, content_type="application/json")
    assert hook.status_code == 400
    assert "PORTFOLIO_BILLING_WEBHOOK_HOSTS" in hook.json()["error"]["message"]
    mail = client.put(
        url, {"amount": "10", "notify_emails": ["a@gmail.com"]}, content_type="application/json"
    )
    assert mail.status_code == 400
    assert "PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS" in mail.json()["error"]["message"]
    form = client.post(
        reverse("billing-team-budget", args=[team.pk]),
        {"amount": "10", "thresholds": "80", "webhook_url": OUTSIDE, "notify_emails": ""},
    )
    assert form.status_code == 400 and b"PORTFOLIO_BILLING_WEBHOOK_HOSTS" in form.content
    assert not Budget.objects.exists()

"""Where budget alerts go. E-mail: to the budget's addresses, else to the team's owners or the department's
managers (active, with an address), else recorded as failed for want of a recipient; each recipient gets a
message of their own, and one not sent is recorded without stopping the others. Webhook: the address
connected to is the address checked (a name answering a public address to the check and 127.0.0.1 to the
connection reaches nothing inside), HTTPS still verifies the certificate against the URL's host name."""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail.backends import locmem
from django.urls import reverse

from portfolio.accounts.models import DepartmentRole, Membership
from portfolio.audit.models import AuditEvent
from portfolio.billing import alerts, budgets, webhooks
from portfolio.billing.choices import PriceKind
from tests.billing.conftest import price, tokens
from tests.billing.receivers import Receiver, fixture_receiver  # noqa: F401 - the receiver fixture
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ENDPOINT_ID = 4343
NAME = "hook.example.test"
PUBLIC = "93.184.215.14"  # a global address: what the name answers the first time


@pytest.fixture(autouse=True)
def _private_hooks(settings):
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True  # the receivers listen on 127.0.0.1


@pytest.fixture
def spent(other_team):
    """``spent(team, money)``: ``team`` has called other_team's endpoint for ``money`` in this hour."""
    price(PriceKind.ENDPOINT, ENDPOINT_ID, "contracts-llm", input_per_million=1_000_000)

    def spend(team, money: int) -> None:
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        tokens(f"{hour:%Y-%m-%d %H:%M}", endpoint_id=ENDPOINT_ID, endpoint="contracts-llm", owner=other_team,
               caller=team, tokens_in=money)  # fmt: skip

    return spend


def with_email(user, address: str, *, active: bool = True):
    get_user_model().objects.filter(pk=user.pk).update(email=address, is_active=active)
    return user


# E-mail recipients


def test_without_addresses_a_team_budget_mails_its_active_owners_that_have_an_address(
    org, team, make_user, spent
):
    with_email(org["owner"], "owner@example.com")
    with_email(org["engineer"], "engineer@example.com")  # not an owner
    with_email(org["outsider"], "outsider@example.com")  # an owner of another team
    gone = with_email(make_user("gone"), "gone@example.com", active=False)
    Membership.objects.create(user=gone, team=team, role="owner")
    Membership.objects.create(user=make_user("no-address"), team=team, role="owner")
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50])
    spent(team, 6)
    (alert,) = alerts.check()
    assert [message.to for message in mail.outbox] == [["owner@example.com"]]
    assert alert.delivery == {"email": "sent"}
    assert AuditEvent.objects.get(action="budget.alert").after["delivery"] == {"email": "sent"}


def test_without_addresses_a_department_budget_mails_its_managers(
    org, department, other_department, team, make_user, spent
):
    manager = with_email(make_user("manager"), "manager@example.com")
    DepartmentRole.objects.create(user=manager, department=department)
    elsewhere = with_email(make_user("elsewhere"), "elsewhere@example.com")
    DepartmentRole.objects.create(user=elsewhere, department=other_department)
    with_email(org["owner"], "owner@example.com")  # a team's owner, not the department's manager
    budgets.set_budget(actor=actor_for(org["admin"]), department=department, amount="10", thresholds=[50])
    spent(team, 6)
    (alert,) = alerts.check()
    assert [message.to for message in mail.outbox] == [["manager@example.com"]]
    assert alert.delivery == {"email": "sent"}


def test_the_budgets_addresses_replace_the_owners(org, team, spent):
    with_email(org["owner"], "owner@example.com")
    budgets.set_budget(
        actor=actor_for(org["admin"]),
        team=team,
        amount="10",
        thresholds=[50],
        notify_emails=["fin@example.com"],
    )
    spent(team, 6)
    alerts.check()
    assert [message.to for message in mail.outbox] == [["fin@example.com"]]


def test_an_alert_nobody_can_be_mailed_is_recorded_as_failed(org, team, spent):
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50])
    spent(team, 6)
    (alert,) = alerts.check()
    assert mail.outbox == []
    assert alert.delivery == {"email": alerts.NO_RECIPIENT}
    assert alert.delivery["email"].startswith("failed: no recipient")
    assert AuditEvent.objects.get(action="budget.alert").after["delivery"] == {"email": alerts.NO_RECIPIENT}
    assert alerts.check() == [], "recorded as failed, and not tried again"


def test_each_recipient_gets_a_message_of_their_own_that_names_no_other(org, team, make_user, spent):
    """One message to all of them showed each owner the others' addresses."""
    with_email(org["owner"], "owner@example.com")
    second = with_email(make_user("second"), "second@example.com")
    Membership.objects.create(user=second, team=team, role="owner")
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50])
    spent(team, 6)
    (alert,) = alerts.check()
    assert sorted(message.to for message in mail.outbox) == [["owner@example.com"], ["second@example.com"]]
    for message in mail.outbox:
        (other,) = {"owner@example.com", "second@example.com"} - set(message.to)
        assert message.cc == message.bcc == [] and other not in message.message().as_string()
    assert alert.delivery == {"email": "sent"}


class BouncingBackend(locmem.EmailBackend):
    """The test outbox, refusing every message to an address of bounce.example.com."""

    def send_messages(self, messages):
        for message in messages:
            refused = [a for a in message.recipients() if a.endswith("@bounce.example.com")]
            if refused:
                raise smtplib.SMTPRecipientsRefused({a: (550, b"5.1.1 no such user") for a in refused})
        return super().send_messages(messages)


class SlowBackend(locmem.EmailBackend):
    """The test outbox, taking 0.3 s a message."""

    def send_messages(self, messages):
        time.sleep(0.3)
        return super().send_messages(messages)


def notifying(org, team, *addresses: str) -> None:
    budgets.set_budget(
        actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50], notify_emails=list(addresses)
    )


def test_a_refused_recipient_is_recorded_and_the_others_are_still_mailed(org, team, spent, settings):
    settings.EMAIL_BACKEND = "tests.billing.test_alert_delivery.BouncingBackend"
    notifying(org, team, "a@example.com", "gone@bounce.example.com", "b@example.com")
    spent(team, 6)
    (alert,) = alerts.check()
    assert [message.to for message in mail.outbox] == [["a@example.com"], ["b@example.com"]]
    assert alert.delivery["email"].startswith("failed: 1 of 3 not sent: SMTPRecipientsRefused:")
    assert (AuditEvent.objects.get(action="budget.alert").after or {}).get("delivery") == alert.delivery


def test_an_unreachable_mail_server_is_recorded_for_every_recipient(org, team, spent, settings):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", port, False
    notifying(org, team, "a@example.com", "b@example.com")
    spent(team, 6)
    (alert,) = alerts.check()
    assert alert.delivery["email"].startswith("failed: 2 of 2 not sent: ConnectionRefusedError:")
    assert len(alert.delivery["email"]) <= 300


def test_no_message_is_begun_after_the_mail_window(org, team, spent, settings, monkeypatch):
    """The window bounds a delivery, which a later check must be able to tell from one left undelivered."""
    settings.EMAIL_BACKEND = "tests.billing.test_alert_delivery.SlowBackend"
    monkeypatch.setattr(alerts, "MAIL_WINDOW", timedelta(seconds=0.2))
    notifying(org, team, "a@example.com", "b@example.com", "c@example.com")
    spent(team, 6)
    (alert,) = alerts.check()
    assert [message.to for message in mail.outbox] == [["a@example.com"]]
    assert alert.delivery == {"email": "failed: 2 of 3 not sent: not begun within 0.2 s of the first"}


def test_the_pages_say_who_is_notified_without_addresses(org, department, team, signed_in):
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="10")
    budgets.set_budget(actor=actor_for(org["admin"]), department=department, amount="20")
    client = signed_in(org["admin"])
    listing = client.get(reverse("billing-budgets")).content.decode()
    assert "the team's owners" in listing and "the department's managers" in listing
    form = client.get(reverse("billing-team-budget", args=[team.pk])).content.decode()
    assert "Left empty, they go to the team's owners who have an e-mail address." in form


# Webhook addresses


@pytest.fixture
def resolver(monkeypatch):
    """``resolver(*answers)``: socket.getaddrinfo answers NAME with each list of addresses in turn (the last
    again after), and other names as the system does; ``.calls`` counts the questions about NAME."""
    real = socket.getaddrinfo

    class Resolver:
        calls = 0

        def __init__(self, *answers: list[str]):
            self.answers = answers

        def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - getaddrinfo's names
            if host != NAME:
                return real(host, port, family, type, proto, flags)
            answer = self.answers[min(self.calls, len(self.answers) - 1)]
            self.calls += 1
            return [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port or 0)) for a in answer
            ]

    def install(*answers: list[str]) -> Resolver:
        fake = Resolver(*answers)
        monkeypatch.setattr(socket, "getaddrinfo", fake)
        return fake

    return install


def hooked(org, team, url: str) -> None:
    budgets.set_budget(
        actor=actor_for(org["admin"]), team=team, amount="10", thresholds=[50], webhook_url=url
    )


def test_a_name_rebound_to_loopback_after_the_check_is_not_called(org, team, spent, receiver, resolver,
                                                                  settings):  # fmt: skip
    hooked(org, team, f"http://{NAME}:{receiver.port}/hook")
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = False
    settings.BILLING_WEBHOOK_TIMEOUT = 0.3  # the public address answers nothing here
    names = resolver([PUBLIC], ["127.0.0.1"])
    spent(team, 6)
    (alert,) = alerts.check()
    assert receiver.received == [], "the POST reached 127.0.0.1"
    assert names.calls == 1, "resolved once: the address checked is the address connected to"
    assert alert.delivery["webhook"].startswith("failed:")


@pytest.mark.parametrize("answer", [["127.0.0.1"], [PUBLIC, "127.0.0.1"], ["10.1.2.3"]])
def test_a_name_with_any_internal_address_is_not_called(
    org, team, spent, receiver, resolver, settings, answer
):
    hooked(org, team, f"http://{NAME}:{receiver.port}/hook")
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = False
    resolver(answer)
    spent(team, 6)
    (alert,) = alerts.check()
    assert alert.delivery["webhook"] == "failed: the host is an internal address; not called"
    assert receiver.received == []


def test_with_private_hosts_allowed_a_name_is_called_with_the_signed_body(
    org, team, spent, receiver, resolver
):
    hooked(org, team, f"http://{NAME}:{receiver.port}/hook")
    resolver(["127.0.0.1"])
    spent(team, 6)
    (alert,) = alerts.check()
    assert alert.delivery["webhook"] == "sent: HTTP 204"
    ((headers, body),) = receiver.received
    assert headers["Host"] == f"{NAME}:{receiver.port}"
    expected = "sha256=" + hmac.new(settings.WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Portfolio-Signature"], expected)


def test_a_redirect_is_not_followed(org, team, spent, receiver):
    redirecting = Receiver(status=307, headers={"Location": f"http://127.0.0.1:{receiver.port}/hook"})
    try:
        hooked(org, team, f"http://127.0.0.1:{redirecting.port}/hook")
        spent(team, 6)
        (alert,) = alerts.check()
    finally:
        redirecting.close()
    assert alert.delivery["webhook"] == "failed: HTTP 307"
    assert len(redirecting.received) == 1 and receiver.received == []


def certificates(tmp_path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` from a fresh CA, and a client context trusting
    that CA only."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)

    def issue(subject: str, public_key, issuer: str, ca: bool, extra=None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    ca = issue("Test CA", ca_key.public_key(), "Test CA", True)
    leaf = issue(name, key.public_key(), "Test CA", False, x509.SubjectAlternativeName([x509.DNSName(name)]))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


@pytest.mark.parametrize(("certified", "delivered"), [(NAME, True), ("elsewhere.example.test", False)])
def test_https_verifies_the_certificate_against_the_urls_host(org, team, spent, resolver, tmp_path,
                                                              monkeypatch, certified, delivered):  # fmt: skip
    server_tls, client_tls = certificates(tmp_path, certified)
    monkeypatch.setattr(webhooks, "_OPENER", webhooks.opener(client_tls))
    receiver = Receiver(tls=server_tls)
    try:
        hooked(org, team, f"https://{NAME}:{receiver.port}/hook")
        resolver(["127.0.0.1"])
        spent(team, 6)
        (alert,) = alerts.check()
    finally:
        receiver.close()
    if delivered:
        assert alert.delivery["webhook"] == "sent: HTTP 204" and len(receiver.received) == 1
    else:
        assert "CERTIFICATE_VERIFY_FAILED" in alert.delivery["webhook"] and receiver.received == []
    assert alert.spend == Decimal("6.00")

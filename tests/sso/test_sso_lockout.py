"""A refused single sign-on answer is a failed sign-in: it counts for the client's address (and for the user
name it concerns), a locked address is refused at the callback as at the password form, and the locks reach
the audit trail once."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from portfolio.accounts import lockout
from portfolio.audit.models import AuditEvent
from tests.conftest import PASSWORD
from tests.sso import test_id_tokens
from tests.sso.test_id_tokens import answer, signed

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
User = get_user_model()
ADDRESS = "198.51.100.9"
trusted, realm_client = test_id_tokens.trusted, test_id_tokens.realm_client  # the same fixtures


def _sign_in_under_way(client) -> None:
    """This browser has started a sign-in (an answer to a browser with none under way is not counted)."""
    session = client.session
    pending = {"nonce": "n", "code_verifier": "v", "redirect_uri": "http://testserver/cb", "next": "/"}
    session["sso.pending"] = {"started-here": pending}
    session.save()


def _forged_answer(client, ip: str = ADDRESS):
    """An answer to a sign-in this browser never started (a made-up state)."""
    return client.get(f"{reverse('sso-callback')}?state=made-up&code=stolen", REMOTE_ADDR=ip)


def test_an_address_that_keeps_sending_refused_answers_is_locked_out(client, sso):
    limit = lockout.limits()["ip"]
    _sign_in_under_way(client)
    for _ in range(limit):
        response = _forged_answer(client)
        assert response.status_code == 302 and response["Location"] == reverse("login")
    locked = _forged_answer(client)
    assert locked.status_code == 429 and "Too many failed attempts, try again later." in locked.text
    assert "_auth_user_id" not in client.session
    # The same lock as the password form's: that address cannot try passwords either, another address can.
    assert (
        client.post(reverse("login"), {"username": "x", "password": "y"}, REMOTE_ADDR=ADDRESS).status_code
        == 429
    )
    assert _forged_answer(client, ip="203.0.113.30").status_code == 302

    # The address's failures up to its lock, and the other address's one.
    failed = AuditEvent.objects.filter(action="user.login_failed")
    assert failed.count() == limit + 1 and {event.after["reason"] for event in failed} == {"state_mismatch"}
    lock = AuditEvent.objects.get(action="user.login_locked")
    assert (lock.object_type, lock.object_id, lock.after["lock"]) == (
        "auth.client_address",
        ADDRESS,
        "address",
    )


def test_a_refusal_that_names_a_user_counts_for_that_user_name(realm_client, monkeypatch, trusted, settings):
    """A realm user whose name a local account holds is refused; those refusals lock the name, as wrong
    passwords would."""
    User.objects.create_user("alice", password=PASSWORD)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        assert answer(realm_client, monkeypatch, signed).status_code == 302
    lock = AuditEvent.objects.get(action="user.login_locked")
    assert (lock.object_type, lock.object_id, lock.after["lock"]) == ("auth.user", "alice", "account")
    # The account name is locked for the password form, from any address.
    response = realm_client.post(
        reverse("login"), {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="203.0.113.31"
    )
    assert response.status_code == 429


def test_an_unreachable_realm_is_nobodys_failure(client, settings):
    """Refused (and audited) as before, but not counted: an outage must not lock everyone out."""
    settings.OIDC = {
        "server_url": "http://127.0.0.1:9/",  # nothing listens there
        "realm": "portfolio",
        "client_id": "portfolio",
        "client_secret": "s3cret",
        "organisation": "Acme",
    }
    pending = {"nonce": "n", "code_verifier": "v", "redirect_uri": "http://testserver/cb", "next": "/"}
    attempts = lockout.limits()["ip"] + 1
    for _ in range(attempts):
        session = client.session
        session["sso.pending"] = {"pending-state": pending}
        session.save()
        response = client.get(f"{reverse('sso-callback')}?state=pending-state&code=c", REMOTE_ADDR=ADDRESS)
        assert response.status_code == 302
    assert not lockout.is_locked(None, ADDRESS)
    failed = AuditEvent.objects.filter(action="user.login_failed")
    assert [event.after["reason"] for event in failed] == ["provider_unavailable"] * attempts
    assert not AuditEvent.objects.filter(action="user.login_locked").exists()

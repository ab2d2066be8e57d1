"""The realm's back-channel logout (OpenID Connect Back-Channel Logout 1.0): a logout token POSTed by the realm
ends the sessions it names, and only a token that passes every check does. Sessions are made by the crafted
sign-in of test_id_tokens (a key the test puts in place of the realm's), so that each logout token below
differs from a good one by one defect."""

from __future__ import annotations

import time
import uuid

import pytest
from django.test import Client
from django.urls import reverse
from jwcrypto import jwk

from portfolio.accounts.models import SsoSession
from portfolio.accounts.sso.logout import BACKCHANNEL_EVENT, MAX_AGE_SECONDS
from portfolio.audit.models import AuditEvent
from tests.sso import test_id_tokens
from tests.sso.conftest import CLIENT_ID, USERS
from tests.sso.test_id_tokens import answer, signed, unsigned

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
trusted, realm_client = test_id_tokens.trusted, test_id_tokens.realm_client  # the same fixtures
SID = "realm-session-1"
ANOTHER_KEY = jwk.JWK.generate(kty="RSA", size=2048, kid="another", alg="RS256", use="sig")
DROP = object()


def logout_token(issuer: str, *, sign=signed, **changes) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "sub": USERS["alice"]["sub"],
        "sid": SID,
        "events": {BACKCHANNEL_EVENT: {}},
    }
    claims.update(changes)
    return sign({name: value for name, value in claims.items() if value is not DROP})


def send(token: str):
    """The realm's POST, from its own HTTP client (no cookie, no CSRF token)."""
    return Client(enforce_csrf_checks=True).post(reverse("sso-backchannel-logout"), {"logout_token": token})


def signed_in(client, monkeypatch, sid: str = SID) -> Client:
    response = answer(client, monkeypatch, lambda claims: signed({**claims, "sid": sid}))
    assert response.status_code == 302 and client.session.get("_auth_user_id")
    return client


def still_signed_in(client) -> bool:
    return client.get(reverse("dashboard")).status_code == 200


def test_a_logout_token_for_the_session_ends_it_and_is_audited_as_the_realms(
    realm_client, monkeypatch, trusted
):
    signed_in(realm_client, monkeypatch)
    record = SsoSession.objects.get()
    assert (record.sid, record.subject, record.issuer) == (
        SID,
        USERS["alice"]["sub"],
        realm_client.realm.issuer,
    )

    response = send(logout_token(realm_client.realm.issuer))

    assert response.status_code == 200, response.content
    assert response["Cache-Control"].startswith("max-age=0") or "no-store" in response["Cache-Control"]
    following = realm_client.get(reverse("dashboard"))
    assert following.status_code == 302 and following["Location"].startswith(reverse("login"))
    logout = AuditEvent.objects.get(action="user.logout")
    assert (logout.actor_label, logout.object_repr, logout.after) == (
        "system:keycloak",
        "alice",
        {"method": "backchannel"},
    )
    assert not SsoSession.objects.exists()


def test_a_logout_token_with_only_the_subject_ends_every_sign_on_session_of_that_person(
    realm_client, monkeypatch, trusted
):
    other_browser = Client()
    other_browser.realm = realm_client.realm
    signed_in(realm_client, monkeypatch, sid="first")
    signed_in(other_browser, monkeypatch, sid="second")

    assert send(logout_token(realm_client.realm.issuer, sid=DROP)).status_code == 200

    assert not still_signed_in(realm_client) and not still_signed_in(other_browser)
    assert AuditEvent.objects.filter(action="user.logout").count() == 2


def test_a_logout_token_for_another_session_ends_nothing(realm_client, monkeypatch, trusted):
    signed_in(realm_client, monkeypatch)
    assert send(logout_token(realm_client.realm.issuer, sid="another-session")).status_code == 200
    assert still_signed_in(realm_client)
    assert not AuditEvent.objects.filter(action="user.logout").exists()


def test_a_replayed_logout_token_is_refused(realm_client, monkeypatch, trusted):
    token = logout_token(realm_client.realm.issuer, sid="nobodys")
    assert send(token).status_code == 200
    replayed = send(token)
    assert replayed.status_code == 400
    assert replayed.json()["error"]["message"] == "logout_token_invalid: replayed"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"aud": "another-client"}, "logout_token_invalid", id="for another audience"),
        pytest.param(
            {"iss": "http://127.0.0.1:1/realms/other"}, "logout_token_invalid", id="from another issuer"
        ),
        pytest.param({"exp": int(time.time()) - 120}, "logout_token_invalid", id="expired"),
        pytest.param(
            {"exp": DROP, "iat": int(time.time()) - MAX_AGE_SECONDS - 120},
            "logout_token_invalid: issued too long ago",
            id="issued too long ago",
        ),
        pytest.param({"nonce": "n"}, "logout_token_invalid: carries a nonce", id="with a nonce"),
        pytest.param({"events": DROP}, "logout_token_invalid", id="without events"),
        pytest.param(
            {"events": {"http://schemas.openid.net/event/other": {}}},
            "logout_token_invalid: not a back-channel logout event",
            id="with another event",
        ),
        pytest.param(
            {"sid": DROP, "sub": DROP},
            "logout_token_invalid: names neither a session nor a subject",
            id="naming nobody",
        ),
        pytest.param({"jti": DROP}, "logout_token_invalid", id="without a jti"),
        pytest.param({"iat": DROP}, "logout_token_invalid", id="without iat"),
    ],
)
def test_a_logout_token_with_a_bad_claim_is_refused(realm_client, monkeypatch, trusted, changes, reason):
    signed_in(realm_client, monkeypatch)
    response = send(logout_token(realm_client.realm.issuer, **changes))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(reason), error
    assert still_signed_in(realm_client)
    assert not AuditEvent.objects.filter(action="user.logout").exists()


@pytest.mark.parametrize(
    ("sign", "reason"),
    [
        pytest.param(unsigned, "logout_token_invalid: algorithm 'none'", id="alg none"),
        pytest.param(
            lambda claims: signed(claims, key=ANOTHER_KEY),
            "logout_token_invalid: signed by an unknown key",
            id="signed by another key",
        ),
        pytest.param(
            lambda claims: signed(claims, key=ANOTHER_KEY, kid=test_id_tokens.ROGUE.kid),
            "logout_token_invalid",
            id="signed by another key under the realm's key id",
        ),
    ],
)
def test_a_logout_token_not_signed_by_the_realm_is_refused(realm_client, monkeypatch, trusted, sign, reason):
    signed_in(realm_client, monkeypatch)
    response = send(logout_token(realm_client.realm.issuer, sign=sign))
    assert response.status_code == 400 and response.json()["error"]["message"].startswith(reason)
    assert still_signed_in(realm_client)


def test_an_id_token_is_not_a_logout_token(realm_client, monkeypatch, trusted):
    signed_in(realm_client, monkeypatch)
    now = int(time.time())
    id_token = signed(
        {"iss": realm_client.realm.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "jti": "j"}
        | {"sub": USERS["alice"]["sub"], "sid": SID, "nonce": "n"}
    )
    assert send(id_token).status_code == 400
    assert send("").status_code == 400
    assert still_signed_in(realm_client)


def test_without_single_sign_on_the_endpoint_refuses(client, settings):
    settings.OIDC = None
    response = send("anything")
    assert response.status_code == 400 and "not set up" in response.json()["error"]["message"]

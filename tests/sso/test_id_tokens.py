"""ID tokens that must not sign anyone in: each reaches the callback as the realm's answer to a sign-in
started here (the code exchange is replaced by the crafted token), and is refused with a message, an audit
row and no session. The realm's real keys come from the running provider; "trusted" tokens are signed with a
key the test puts in place of them, to reach each claim check on its own."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from jwcrypto import jwk, jwt

from portfolio.accounts.sso import client as oidc
from portfolio.audit.models import AuditEvent
from tests.sso.conftest import CLIENT_ID, CLIENT_SECRET, USERS

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
User = get_user_model()
ROGUE = jwk.JWK.generate(kty="RSA", size=2048, kid="rogue", alg="RS256", use="sig")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def signed(claims: dict, *, key=ROGUE, kid: str | None = None, alg: str = "RS256") -> str:
    token = jwt.JWT(header={"alg": alg, "kid": kid or key.kid, "typ": "JWT"}, claims=claims)
    token.make_signed_token(key)
    return token.serialize()


def unsigned(claims: dict) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


@pytest.fixture
def trusted(monkeypatch):
    """The realm's keys, as far as the platform knows, are the test's own."""
    keys = jwk.JWKSet()
    keys.add(jwk.JWK(**ROGUE.export_public(as_dict=True)))
    monkeypatch.setattr(oidc, "_keys", lambda config, refresh=False: keys)


def answer(client, monkeypatch, make_token, *, access_token: str | None = None):
    """Start a sign-in here, then come back with the token ``make_token(claims)`` builds (and, where given,
    the access token of the same exchange)."""
    query = parse_qs(urlsplit(client.get(reverse("sso-login"))["Location"]).query)
    state, nonce = query["state"][0], query["nonce"][0]
    now = int(time.time())
    claims = {
        "iss": client.realm.issuer,
        "sub": USERS["alice"]["sub"],
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": nonce,
        "preferred_username": "alice",
        "email": "alice@example.com",
    }
    token = make_token(claims)
    tokens = (
        {"id_token": token} if access_token is None else {"id_token": token, "access_token": access_token}
    )
    monkeypatch.setattr(oidc, "exchange", lambda config, **kwargs: tokens)
    return client.get(f"{reverse('sso-callback')}?state={state}&code=crafted")


@pytest.fixture
def realm_client(client, sso):
    client.realm = sso
    return client


def assert_refused(client, response, reason: str) -> AuditEvent:
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert "_auth_user_id" not in client.session
    event = AuditEvent.objects.get(action="user.login_failed")
    assert event.after["method"] == "sso" and event.after["reason"].startswith(reason), event.after
    assert not AuditEvent.objects.filter(action="user.login").exists()
    return event


def test_a_well_formed_token_from_a_trusted_key_signs_in(realm_client, monkeypatch, trusted):
    """The crafted path itself works, so the refusals below are refusals of their one defect."""
    response = answer(realm_client, monkeypatch, signed)
    assert response.status_code == 302 and response["Location"] == "/"
    assert AuditEvent.objects.get(action="user.login").after == {"method": "sso"}


@pytest.mark.parametrize(
    "defect",
    [
        pytest.param(lambda claims: {**claims, "aud": "another-client"}, id="for another audience"),
        pytest.param(
            lambda claims: {**claims, "aud": [CLIENT_ID, "other"], "azp": "other"}, id="for another party"
        ),
        pytest.param(
            lambda claims: {**claims, "iss": "http://127.0.0.1:1/realms/other"}, id="from another issuer"
        ),
        pytest.param(lambda claims: {**claims, "exp": int(time.time()) - 120}, id="expired"),
        pytest.param(lambda claims: {**claims, "nbf": int(time.time()) + 600}, id="not valid yet"),
        pytest.param(lambda claims: {**claims, "nonce": "another-sign-in"}, id="with another nonce"),
        pytest.param(lambda claims: {k: v for k, v in claims.items() if k != "nonce"}, id="without a nonce"),
    ],
)
def test_a_token_with_a_bad_claim_is_refused(realm_client, monkeypatch, trusted, defect):
    response = answer(realm_client, monkeypatch, lambda claims: signed(defect(claims)))
    event = assert_refused(realm_client, response, "id_token_invalid")
    assert (event.object_type, event.actor_label) == ("auth.sso", "anonymous")
    assert "could not be verified" in realm_client.get(reverse("login")).text
    assert not User.objects.filter(username="alice").exists()


def test_a_refusal_for_another_nonce_keeps_the_expected_one_out_of_the_audit_trail(
    realm_client, monkeypatch, trusted
):
    expected = {}

    def with_another_nonce(claims):
        expected["nonce"] = claims["nonce"]
        return signed({**claims, "nonce": "another-sign-in"})

    response = answer(realm_client, monkeypatch, with_another_nonce)
    reason = assert_refused(realm_client, response, "id_token_invalid").after["reason"]
    assert "nonce" in reason and expected["nonce"][:8] not in reason, reason


def test_a_token_signed_by_a_key_the_realm_does_not_have_is_refused(realm_client, monkeypatch):
    response = answer(realm_client, monkeypatch, signed)
    assert_refused(realm_client, response, "id_token_invalid: signed by an unknown key")


def test_a_token_signed_by_another_key_under_the_realms_key_id_is_refused(realm_client, monkeypatch):
    certs = httpx.get(f"{realm_client.realm.issuer}/protocol/openid-connect/certs").json()
    realm_kid = certs["keys"][0]["kid"]
    response = answer(realm_client, monkeypatch, lambda claims: signed(claims, kid=realm_kid))
    assert_refused(realm_client, response, "id_token_invalid")


def test_a_token_with_alg_none_is_refused_even_with_every_claim_right(realm_client, monkeypatch, trusted):
    response = answer(realm_client, monkeypatch, unsigned)
    assert_refused(realm_client, response, "id_token_invalid: algorithm 'none'")


def test_a_token_signed_with_the_client_secret_is_refused(realm_client, monkeypatch, trusted):
    secret = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(CLIENT_SECRET.encode()).rstrip(b"=").decode())
    response = answer(
        realm_client, monkeypatch, lambda claims: signed(claims, key=secret, kid="hs", alg="HS256")
    )
    assert_refused(realm_client, response, "id_token_invalid: algorithm 'HS256'")


def test_a_realm_user_cannot_take_over_a_local_account_of_the_same_name(realm_client, monkeypatch, trusted):
    local = User.objects.create_user("alice", password="break-glass-password")
    response = answer(realm_client, monkeypatch, signed)
    event = assert_refused(realm_client, response, "username_taken")
    assert (event.object_type, event.object_id) == ("auth.user", "alice")
    assert "already exists here and is not linked to Acme" in realm_client.get(reverse("login")).text
    local.refresh_from_db()
    assert local.check_password("break-glass-password") and not local.external_identities.exists()


def test_a_deactivated_account_cannot_sign_in_through_the_realm(realm_client, monkeypatch, trusted):
    answer(realm_client, monkeypatch, signed)
    realm_client.logout()
    User.objects.filter(username="alice").update(is_active=False)
    response = answer(realm_client, monkeypatch, signed)
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert "_auth_user_id" not in realm_client.session
    assert AuditEvent.objects.get(action="user.login_failed").after == {
        "method": "sso",
        "reason": "user_inactive",
    }

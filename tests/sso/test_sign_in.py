"""Signing in with the organisation's realm: the authorization code flow with PKCE against a real OpenID
Connect provider on loopback (npm oidc-provider serving Keycloak's paths), driven by plain HTTP clients: the
Django test client for this platform, httpx for the realm's sign-in form."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from portfolio.accounts.models import ExternalIdentity
from portfolio.audit.models import AuditEvent
from tests.sso.conftest import REDIRECT_URI, USERS

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
User = get_user_model()


def start(client, next_url: str = "") -> str:
    """Press "Sign in with ...": the realm's authorization URL this platform sends the browser to."""
    response = client.get(reverse("sso-login") + (f"?next={next_url}" if next_url else ""))
    assert response.status_code == 302, response.content
    return response["Location"]


def sign_in_at_realm(authorize_url: str, username: str, password: str | None = None) -> str:
    """Fill in the realm's sign-in form; the path and query the realm sends the browser back to."""
    password = USERS[username]["password"] if password is None else password
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        response = browser.get(authorize_url)
        while response.is_redirect:
            response = browser.get(response.url.join(response.headers["Location"]))
        assert response.status_code == 200, response.text
        action = re.search(r'<form id="kc-form-login" method="post" action="([^"]+)"', response.text).group(1)
        response = browser.post(response.url.join(action), data={"username": username, "password": password})
        while response.is_redirect:
            location = response.url.join(response.headers["Location"])
            if str(location).startswith(REDIRECT_URI):
                return f"{location.path}?{location.query.decode()}"
            response = browser.get(location)
    raise AssertionError(
        f"the realm did not send the browser back: {response.status_code} {response.text[:300]}"
    )


def signed_in_user(client):
    return client.session.get("_auth_user_id")


def test_the_sign_in_page_offers_the_organisation_only_when_sign_on_is_set_up(client, settings, sso):
    assert "Sign in with Acme" in client.get(reverse("login")).text
    settings.OIDC = None
    assert "Sign in with" not in client.get(reverse("login")).text
    response = client.get(reverse("sso-login"), follow=True)
    assert "Single sign-on is not set up" in response.text


def test_a_realm_user_signs_in_with_pkce_is_created_just_in_time_and_audited(client, sso):
    authorize_url = start(client, next_url="/teams/")
    sent = parse_qs(urlsplit(authorize_url).query)
    assert authorize_url.startswith(f"{sso.issuer}/protocol/openid-connect/auth?")
    assert sent["code_challenge_method"] == ["S256"] and sent["redirect_uri"] == [REDIRECT_URI]
    assert len(sent["state"][0]) >= 32 and len(sent["nonce"][0]) >= 32 and "openid" in sent["scope"][0]

    response = client.get(sign_in_at_realm(authorize_url, "alice"))

    assert response.status_code == 302 and response["Location"] == "/teams/"
    alice = User.objects.get(username="alice")
    assert str(alice.pk) == signed_in_user(client) and client.get("/").status_code == 200
    assert alice.email == "alice@example.com" and not alice.has_usable_password()
    identity = ExternalIdentity.objects.get(user=alice)
    assert (identity.issuer, identity.subject) == (sso.issuer, USERS["alice"]["sub"])
    created, login = AuditEvent.objects.filter(action__in=["user.create", "user.login"]).order_by("sequence")
    assert (created.action, created.actor_label, created.after["source"]) == ("user.create", "alice", "sso")
    assert (login.action, login.actor_user_id, login.after) == ("user.login", alice.pk, {"method": "sso"})


def test_a_second_sign_in_finds_the_same_account(client, sso):
    client.get(sign_in_at_realm(start(client), "bob"))
    client.logout()
    response = client.get(sign_in_at_realm(start(client), "bob"))
    assert response.status_code == 302 and response["Location"] == "/"
    assert User.objects.filter(username="bob").count() == 1 == ExternalIdentity.objects.count()
    assert AuditEvent.objects.filter(action="user.create").count() == 1
    assert AuditEvent.objects.filter(action="user.login", after__method="sso").count() == 2


def refused(client, response, reason: str) -> AuditEvent:
    """The sign-in ended on the sign-in page with a message, no session, and one audited refusal."""
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert signed_in_user(client) is None
    event = AuditEvent.objects.get(action="user.login_failed")
    assert event.after["method"] == "sso" and event.after["reason"].startswith(reason), event.after
    assert not AuditEvent.objects.filter(action="user.login").exists()
    return event


def test_an_answer_with_another_state_is_refused(client, sso):
    callback = sign_in_at_realm(start(client), "alice")
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    response = client.get(forged)
    refused(client, response, "state_mismatch")
    assert "was not started here" in client.get(reverse("login")).text
    assert not User.objects.filter(username="alice").exists()


def test_an_answer_without_a_state_is_refused(client, sso):
    callback = sign_in_at_realm(start(client), "alice")
    refused(client, client.get(re.sub(r"&?state=[^&]+", "", callback)), "state_mismatch")


def test_a_replayed_code_is_refused(client, sso):
    callback = sign_in_at_realm(start(client), "alice")
    assert client.get(callback)["Location"] == "/"
    client.logout()
    # A new sign-in's state, with the code that was already exchanged.
    state = parse_qs(urlsplit(start(client)).query)["state"][0]
    replayed = re.sub(r"state=[^&]+", f"state={state}", callback)
    response = client.get(replayed)
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert signed_in_user(client) is None
    event = AuditEvent.objects.get(action="user.login_failed")
    assert event.after == {"method": "sso", "reason": "code_refused"}
    assert "did not accept this sign-in" in client.get(reverse("login")).text


def test_a_wrong_password_at_the_realm_never_reaches_the_platform(client, sso):
    with pytest.raises(AssertionError, match="did not send the browser back"):
        sign_in_at_realm(start(client), "alice", password="wrong")


def test_keys_the_realm_rotated_in_are_fetched_again(client, sso):
    from django.core.cache import cache

    from portfolio.accounts.sso import client as oidc
    from portfolio.accounts.sso.config import current

    # What an earlier sign-in cached: a key the realm has since retired.
    retired = {"kty": "RSA", "kid": "retired", "use": "sig", "alg": "RS256", "n": "sXch", "e": "AQAB"}
    cache.set(oidc._cache_key(current(), "jwks"), {"keys": [retired]}, 3600)
    callback = sign_in_at_realm(start(client), "alice")
    logged = len(sso.log.read_text())
    response = client.get(callback)
    assert response.status_code == 302 and response["Location"] == "/"
    assert "GET /realms/portfolio/protocol/openid-connect/certs 200" in sso.log.read_text()[logged:]


def test_the_realm_refuses_a_sign_in_without_pkce_and_a_code_without_its_verifier(client, sso):
    authorize_url = start(client)
    without_pkce = re.sub(r"&code_challenge(_method)?=[^&]+", "", authorize_url)
    answer = httpx.get(without_pkce, follow_redirects=False)
    assert "code_challenge" not in without_pkce and "error=invalid_request" in answer.headers["Location"]

    callback = sign_in_at_realm(authorize_url, "alice")
    session = client.session
    state = parse_qs(urlsplit(callback).query)["state"][0]
    session["sso.pending"][state]["code_verifier"] = "another-verifier-" + "x" * 40
    session.save()
    event = refused(client, client.get(callback), "code_refused")
    assert event.object_type == "auth.sso"


def test_a_realm_that_says_no_is_refused_with_its_error_code(client, sso):
    state = parse_qs(urlsplit(start(client)).query)["state"][0]
    response = client.get(f"{reverse('sso-callback')}?state={state}&error=access_denied<script>")
    event = refused(client, response, "provider_error")
    assert (
        event.after["reason"].startswith("provider_error: access_denied") and "<" not in event.after["reason"]
    )
    assert "Acme did not sign you in" in client.get(reverse("login")).text

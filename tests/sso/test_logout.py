"""Signing out of a session made by single sign-on ends it at the realm too (RP-initiated logout): the
browser is sent to the realm's end_session_endpoint with the ID token as the hint and comes back to the
sign-in page. A password session signs out as before."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.urls import reverse

from portfolio.accounts.models import SsoSession
from portfolio.accounts.sso.logout import ID_TOKEN, SID
from portfolio.audit.models import AuditEvent
from tests.conftest import PASSWORD
from tests.sso.conftest import CLIENT_ID
from tests.sso.test_sign_in import sign_in_at_realm, start

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]


def test_signing_out_of_a_sign_on_session_ends_it_at_the_realm_too(client, sso):
    assert client.get(sign_in_at_realm(start(client), "alice")).status_code == 302
    id_token = client.session[ID_TOKEN]
    assert id_token.count(".") == 2 and SID in client.session
    assert SsoSession.objects.get().session_key == client.session.session_key

    response = client.post(reverse("logout"))

    assert response.status_code == 302
    sent = urlsplit(response["Location"])
    assert f"{sent.scheme}://{sent.netloc}{sent.path}" == f"{sso.issuer}/protocol/openid-connect/logout"
    assert parse_qs(sent.query) == {
        "id_token_hint": [id_token],
        "client_id": [CLIENT_ID],
        "post_logout_redirect_uri": ["http://testserver/login/"],
    }
    assert "_auth_user_id" not in client.session and not SsoSession.objects.exists()
    assert AuditEvent.objects.get(action="user.logout").after == {"method": "sso"}
    # The realm takes the request (its hint and return address are good): no error page.
    assert httpx.get(response["Location"], timeout=30).status_code == 200


def test_a_password_session_signs_out_as_before(client, org, sso):
    assert client.post(reverse("login"), {"username": "viewer", "password": PASSWORD}).status_code == 302
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert AuditEvent.objects.get(action="user.logout").after is None


def test_when_the_realm_cannot_be_reached_signing_out_still_ends_the_session_here(client, sso, settings):
    assert client.get(sign_in_at_realm(start(client), "alice")).status_code == 302
    settings.OIDC = {**settings.OIDC, "server_url": "http://127.0.0.1:9/"}  # nothing listens there
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert "_auth_user_id" not in client.session and not SsoSession.objects.exists()


def test_pages_let_the_sign_out_form_lead_to_the_realm_only_when_sign_on_is_on(client, org, settings):
    """Browsers hold a form's redirects to form-action: with 'self' alone, the sign-out POST that redirects
    to the realm leaves the person on the page (the browser test found it)."""
    settings.OIDC = {
        "server_url": "https://keycloak.example.com:8443/",
        "realm": "acme",
        "client_id": "portfolio",
        "client_secret": "s3cret",
        "organisation": "Acme",
    }
    client.force_login(org["viewer"])
    policy = client.get(reverse("dashboard"))["Content-Security-Policy"]
    assert "form-action 'self' https://keycloak.example.com:8443;" in policy + ";"
    settings.OIDC = None
    assert "form-action 'self';" in client.get(reverse("dashboard"))["Content-Security-Policy"] + ";"

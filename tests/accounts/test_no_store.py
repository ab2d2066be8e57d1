"""What a signed-in person was shown is kept by no cache (``portfolio.nostore``), and signing out tells the
browser to drop what it kept: the next person at the browser pressing Back must not get the audit log
back from the back/forward cache. The real browser's Back is tests/e2e/test_back_after_sign_out.py."""

from __future__ import annotations

import pytest
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import reverse

from portfolio.accounts import personal_tokens
from portfolio.accounts.sso.logout import ID_TOKEN
from portfolio.nostore import NoStoreMiddleware
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

SIGNED_IN_PAGES = ["/", "/audit/", "/users/", "/billing/", "/keys/", "/api/v1/users", "/api/v1/me"]
OIDC = {
    "server_url": "https://keycloak.example.com:8443/",
    "realm": "acme",
    "client_id": "portfolio",
    "client_secret": "s3cret",
    "organisation": "Acme",
}


def _kept_by_no_cache(response) -> bool:
    return {"no-store", "no-cache", "private"} <= {
        part.strip() for part in response.get("Cache-Control", "").split(",")
    }


@pytest.mark.parametrize("path", SIGNED_IN_PAGES)
def test_the_pages_and_api_answers_of_a_signed_in_session_are_kept_by_no_cache(signed_in, org, path):
    response = signed_in(org["admin"]).get(path)
    assert response.status_code == 200
    assert _kept_by_no_cache(response), response.get("Cache-Control")


def test_an_auditors_audit_log_is_kept_by_no_cache(signed_in, org):
    response = signed_in(org["auditor"]).get(reverse("audit-log"))
    assert response.status_code == 200 and _kept_by_no_cache(response)


def test_an_api_answer_to_a_personal_token_is_kept_by_no_cache(client, org):
    _token, plaintext = personal_tokens.create_personal_token(
        actor=actor_for(org["admin"]), name="ci", expires_in_days=5
    )
    response = client.get("/api/v1/users", HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert response.status_code == 200 and _kept_by_no_cache(response)


def test_the_sign_in_page_stays_as_it_was_for_an_anonymous_visitor(client):
    """It was marked ``never_cache`` by its view before the middleware came, and it still is, unchanged."""
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert response["Cache-Control"] == "max-age=0, no-cache, no-store, must-revalidate, private"


def test_an_anonymous_health_check_gets_no_cache_headers_and_reads_no_session(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert not response.has_header("Cache-Control") and not response.has_header("Vary")


def test_a_view_that_says_how_it_may_be_cached_is_left_as_it_said(org, settings):
    request = RequestFactory().get("/billing/export/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = "a-session"
    request.user = org["admin"]
    own = HttpResponse("a bill")
    own["Cache-Control"] = "private, max-age=60"
    response = NoStoreMiddleware(lambda _request: own)(request)
    assert response["Cache-Control"] == "private, max-age=60" and not response.has_header("Expires")


def test_signing_out_tells_the_browser_to_drop_its_cache(signed_in, org):
    response = signed_in(org["auditor"]).post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert response["Clear-Site-Data"] == '"cache"'


def test_signing_out_of_a_sign_on_session_tells_the_browser_to_drop_its_cache_too(
    signed_in, org, settings, monkeypatch
):
    """The redirect to the realm's logout page carries it as well: the browser may not come back here."""
    settings.OIDC = OIDC
    realm_logout = "https://keycloak.example.com:8443/realms/acme/protocol/openid-connect/logout"
    monkeypatch.setattr(
        "portfolio.accounts.views.auth.sso_logout.end_session_url", lambda config, **_hints: realm_logout
    )
    client = signed_in(org["auditor"])
    session = client.session
    session[ID_TOKEN] = "header.claims.signature"
    session.save()
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == realm_logout
    assert response["Clear-Site-Data"] == '"cache"'

"""How /api/v1 decides who is calling: a token call is judged by its token alone and is not subject to
CSRF; an anonymous call is a 401; a browser session's unsafe call keeps Django's CSRF check."""

import pytest
from django.test import Client

from portfolio.accounts import personal_tokens
from portfolio.accounts.models import Team
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

UNSAFE_CALLS = [
    ("post", "/api/v1/departments", {"name": "Finance", "cost_center": "CC-900"}),
    ("patch", "/api/v1/teams/{team}", {"name": "Renamed"}),
    ("put", "/api/v1/departments/{department}", {"name": "Ops", "cost_center": "CC-100"}),
    ("delete", "/api/v1/tokens/{token}", None),
]


@pytest.fixture
def browser():
    """A client that enforces CSRF as a browser session would meet it."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def revoked_token(org):
    token, plaintext = personal_tokens.create_personal_token(
        actor=actor_for(org["admin"]), name="old", expires_in_days=5
    )
    personal_tokens.revoke_personal_token(actor=actor_for(org["admin"]), token=token)
    return plaintext


def _call(client, method, url, data, **headers):
    if data is None:
        return getattr(client, method)(url, **headers)
    return getattr(client, method)(url, data, content_type="application/json", **headers)


def _urls(url: str, team, department, token_id: int) -> str:
    return url.format(team=team.pk, department=department.pk, token=token_id)


@pytest.mark.parametrize(("method", "url", "data"), UNSAFE_CALLS)
@pytest.mark.parametrize("credential", ["missing", "junk", "revoked"])
def test_an_unsafe_call_without_a_valid_token_is_401_not_a_csrf_failure(
    browser, org, team, department, revoked_token, method, url, data, credential
):
    headers = {
        "missing": {},
        "junk": {"HTTP_AUTHORIZATION": "Bearer pat_notarealtoken_xxxxxxxxxxxxxxxxxxxxxxxx"},
        "revoked": {"HTTP_AUTHORIZATION": f"Bearer {revoked_token}"},
    }[credential]
    response = _call(browser, method, _urls(url, team, department, 1), data, **headers)
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == "unauthenticated"
    assert response["WWW-Authenticate"] == "Bearer"
    assert Team.objects.get(pk=team.pk).name == team.name


@pytest.mark.parametrize(("method", "url", "data"), UNSAFE_CALLS)
def test_a_valid_token_changes_things_without_any_csrf_token(
    browser, org, team, department, method, url, data
):
    token, plaintext = personal_tokens.create_personal_token(
        actor=actor_for(org["admin"]), name="ci", expires_in_days=5
    )
    response = _call(
        browser,
        method,
        _urls(url, team, department, token.pk),
        data,
        HTTP_AUTHORIZATION=f"Bearer {plaintext}",
    )
    assert response.status_code in (200, 201), response.content


def test_a_session_call_without_the_csrf_token_is_refused_in_the_error_shape(browser, org, team):
    browser.force_login(org["owner"])
    response = browser.patch(f"/api/v1/teams/{team.pk}", {"name": "X"}, content_type="application/json")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "csrf_failed" and error["request_id"] == response["X-Request-ID"]
    assert Team.objects.get(pk=team.pk).name == team.name


def test_a_session_call_with_the_csrf_token_passes(browser, org, team):
    browser.force_login(org["owner"])
    browser.get("/")  # the page sets the csrftoken cookie, as a browser's first visit does
    csrf = browser.cookies["csrftoken"].value
    response = browser.patch(
        f"/api/v1/teams/{team.pk}",
        {"name": "Renamed"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert response.status_code == 200
    assert Team.objects.get(pk=team.pk).name == "Renamed"


def test_a_bad_token_is_401_even_from_a_signed_in_browser(browser, org, team):
    # The header decides alone: a script's broken token must not silently borrow a session.
    browser.force_login(org["owner"])
    response = browser.get(
        "/api/v1/me", HTTP_AUTHORIZATION="Bearer pat_notarealtoken_xxxxxxxxxxxxxxxxxxxxxxxx"
    )
    assert response.status_code == 401
    assert browser.get("/api/v1/me").json()["username"] == "owner"


def test_an_anonymous_safe_call_is_401(browser):
    response = browser.get("/api/v1/me")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"

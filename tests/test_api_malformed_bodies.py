"""A form body Django cannot parse is the caller's mistake: a 400 in the API's error shape, not a 500."""

from __future__ import annotations

import pytest
from django.test import Client

from portfolio.accounts import personal_tokens
from portfolio.registry import services
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def bearer(org, team) -> dict:
    engineer = actor_for(org["engineer"])
    services.create_model(actor=engineer, name="router", owner_team=team)
    _, plaintext = personal_tokens.create_personal_token(actor=engineer, name="ci", expires_in_days=30)
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def assert_malformed(response) -> None:
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid"


def test_a_multipart_upload_without_a_boundary_is_refused_as_malformed(client, bearer):
    response = client.post(
        "/api/v1/models/router/uploads", data=b"x", content_type="multipart/form-data", **bearer
    )
    assert_malformed(response)


def test_a_form_upload_in_another_charset_than_utf8_is_refused_as_malformed(client, bearer):
    response = client.post(
        "/api/v1/models/router/uploads",
        data=b"base_version_id=1",
        content_type="application/x-www-form-urlencoded; charset=latin-1",
        **bearer,
    )
    assert_malformed(response)


def test_a_browser_sessions_unsafe_call_with_a_broken_multipart_body_is_refused_as_malformed(org, settings):
    """The CSRF check of a session call reads the form body before any view does."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(org["engineer"])
    browser.cookies[settings.CSRF_COOKIE_NAME] = (
        "a" * 32
    )  # a secret of the right shape: the body is read next
    response = browser.post("/api/v1/models", data=b"x", content_type="multipart/form-data; boundary=")
    assert_malformed(response)

"""The upload allowance of a session cookie is Django's judgement of that session: one of before a password
change is anonymous to Django, and gets no more than an anonymous caller."""

from __future__ import annotations

import pytest
from django.contrib.sessions.models import Session
from django.test import Client

from portfolio.accounts import services
from portfolio.bodylimit import credentialed
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


def scope_with_session(client: Client, settings) -> dict:
    value = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {"type": "http", "headers": [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={value}".encode())]}


def test_a_session_of_before_a_password_change_gets_no_upload_allowance(org, settings):
    engineer = org["engineer"]
    elsewhere = Client()
    elsewhere.force_login(engineer)
    stale = scope_with_session(elsewhere, settings)
    assert credentialed(stale)

    services.change_password(actor=actor_for(engineer), user=engineer, new_password="a new one, 2b long")

    assert not credentialed(stale)
    fresh = Client()
    fresh.force_login(engineer)
    assert credentialed(scope_with_session(fresh, settings))


def test_a_session_signed_under_a_rotated_secret_keeps_its_allowance_and_its_key(org, settings):
    """Django gives such a session a new key in the request; judging it here must not, or the client's cookie
    would name a deleted session and its next request be signed out."""
    browser = Client()
    browser.force_login(org["engineer"])
    scope = scope_with_session(browser, settings)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a rotated secret key of the test, fifty characters or more long"

    assert credentialed(scope)
    assert Session.objects.filter(session_key=browser.cookies[settings.SESSION_COOKIE_NAME].value).exists()

"""Sessions anonymous visitors make: each cookie-less start of a single sign-on saved a session kept for the whole
cookie age, a cookie-less answer to the callback (any site's image tag) saved one too, and nothing ever deleted
an expired session, while every deactivation and sign-on sign-in reads the whole table. Now a start's session
lasts as long as a sign-in at the realm may take (the usual age once signed in, by the realm or by password), a
callback with no sign-in under way saves none, and expired sessions are deleted hourly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from portfolio.accounts import tasks
from portfolio.accounts.views.sso import PENDING_SECONDS
from tests.conftest import PASSWORD
from tests.sso.test_sign_in import sign_in_at_realm, start

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]


def lifetime(session: Session) -> timedelta:
    return session.expire_date - timezone.now()


def test_an_anonymous_start_of_a_sign_in_keeps_its_session_only_while_the_sign_in_may_take(sso, settings):
    Client().get(reverse("sso-login"))
    (session,) = Session.objects.all()
    assert (
        lifetime(session)
        <= timedelta(seconds=PENDING_SECONDS)
        < timedelta(seconds=settings.SESSION_COOKIE_AGE)
    )


def test_a_sign_in_at_the_realm_gets_the_sessions_usual_age(client, sso, settings):
    client.get(sign_in_at_realm(start(client), "alice"))
    session = Session.objects.get(session_key=client.session.session_key)
    assert lifetime(session) > timedelta(seconds=settings.SESSION_COOKIE_AGE - 60)


def test_a_password_sign_in_after_a_sign_on_was_begun_gets_the_usual_age(client, sso, org, settings):
    start(client)  # begun, then the person signs in with a password instead
    response = client.post(reverse("login"), {"username": "admin", "password": PASSWORD})
    assert response.status_code == 302
    session = Session.objects.get(session_key=client.session.session_key)
    assert session.get_decoded().get("_auth_user_id")
    assert lifetime(session) > timedelta(seconds=settings.SESSION_COOKIE_AGE - 60)


def test_a_callback_with_no_sign_in_under_way_saves_no_session(sso):
    for _ in range(5):
        Client().get(reverse("sso-callback") + "?state=x&code=y")
    assert not Session.objects.exists()


def test_expired_sessions_are_deleted_by_the_hourly_clear(sso, settings):
    assert settings.CELERY_BEAT_SCHEDULE["accounts-clear-sessions"]["schedule"] == 3600.0
    for _ in range(3):
        Client().get(reverse("sso-login"))
    Session.objects.filter(pk=Session.objects.first().pk).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )

    tasks.clear_sessions()

    assert Session.objects.count() == 2

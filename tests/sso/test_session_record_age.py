"""The record of a single sign-on session lasts as long as the session, not ``SESSION_COOKIE_AGE`` from the
sign-in: a session saved again is kept that long from then, and once its record was dropped the realm could
no longer end it. Sessions are made by the crafted sign-in of test_id_tokens, logout tokens by
test_backchannel_logout."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from portfolio.accounts.models import SsoSession
from tests.sso import test_id_tokens
from tests.sso.test_backchannel_logout import logout_token, send, signed_in, still_signed_in

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
trusted, realm_client = test_id_tokens.trusted, test_id_tokens.realm_client  # the same fixtures


def another_sign_in(realm_client, monkeypatch) -> None:
    """A later sign-in, by another browser: it drops the records of ended sessions."""
    other = Client()
    other.realm = realm_client.realm
    signed_in(other, monkeypatch, sid="realm-session-2")


def test_a_session_kept_past_its_first_age_can_still_be_ended_by_the_realm(
    realm_client, monkeypatch, trusted, settings
):
    signed_in(realm_client, monkeypatch)
    # Signed in longer ago than the cookie age, and saved again since: the session lives on.
    long_ago = timezone.now() - timedelta(seconds=settings.SESSION_COOKIE_AGE + 60)
    SsoSession.objects.update(created_at=long_ago)
    another_sign_in(realm_client, monkeypatch)
    assert still_signed_in(realm_client)

    assert send(logout_token(realm_client.realm.issuer)).status_code == 200

    assert not still_signed_in(realm_client), "the realm's logout ended nothing: the record had been dropped"


def test_the_records_of_ended_sessions_are_dropped_at_the_next_sign_in(realm_client, monkeypatch, trusted):
    signed_in(realm_client, monkeypatch)
    ended = SsoSession.objects.get()
    Session.objects.filter(session_key=ended.session_key).update(expire_date=timezone.now())
    SsoSession.objects.update(created_at=timezone.now() - timedelta(hours=2))

    another_sign_in(realm_client, monkeypatch)

    assert list(SsoSession.objects.values_list("sid", flat=True)) == ["realm-session-2"]


@pytest.mark.parametrize("signed_in_ago", [timedelta(0), timedelta(hours=3)])
def test_a_record_is_kept_while_its_session_key_may_be_changing(
    realm_client, monkeypatch, trusted, signed_in_ago
):
    """Between Django's change of a key (the old session row deleted) and ``logout.follow`` in the same
    request, the record names a key with no session: a sign-in elsewhere at that moment must not drop it, or
    the session is ended (found by review: after a secret rotation every session goes through this, hours
    after its sign-in)."""
    signed_in(realm_client, monkeypatch)
    SsoSession.objects.update(created_at=timezone.now() - signed_in_ago)
    Session.objects.all().delete()

    another_sign_in(realm_client, monkeypatch)

    assert SsoSession.objects.count() == 2


def test_a_record_whose_session_is_gone_goes_after_the_cookie_age(
    realm_client, monkeypatch, trusted, settings
):
    signed_in(realm_client, monkeypatch)
    SsoSession.objects.update(created_at=timezone.now() - timedelta(seconds=settings.SESSION_COOKIE_AGE + 60))
    Session.objects.all().delete()

    another_sign_in(realm_client, monkeypatch)

    assert list(SsoSession.objects.values_list("sid", flat=True)) == ["realm-session-2"]

"""A single sign-on session whose key Django changes (after a secret rotation, ``auth.get_user`` moves a session
that verifies only with a fallback key to a new key) can still be ended by the realm: its record follows it.
Sessions are made by the crafted sign-in of test_id_tokens, logout tokens by test_backchannel_logout."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.accounts.models import SsoSession
from portfolio.accounts.sso.logout import RECORDED_KEY
from tests.conftest import PASSWORD
from tests.sso import test_id_tokens
from tests.sso.test_backchannel_logout import logout_token, send, signed_in, still_signed_in

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
trusted, realm_client = test_id_tokens.trusted, test_id_tokens.realm_client  # the same fixtures
NEW_SECRET = "a-rotated-secret-key-0123456789-abcdefghijklmnop"


def rotate_secret_key(settings) -> None:
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = NEW_SECRET


def test_a_logout_token_ends_a_session_whose_key_changed_after_a_secret_rotation(
    realm_client, monkeypatch, trusted, settings
):
    signed_in(realm_client, monkeypatch)
    before = realm_client.session.session_key
    rotate_secret_key(settings)

    assert still_signed_in(realm_client)  # verified with the old key: moved to a new one
    assert realm_client.session.session_key != before

    assert send(logout_token(realm_client.realm.issuer)).status_code == 200

    following = realm_client.get(reverse("dashboard"))
    assert following.status_code == 302, "the realm's logout ended nothing"
    assert following["Location"].startswith(reverse("login"))
    assert not SsoSession.objects.exists()


def test_a_request_that_keeps_its_key_moves_nothing(realm_client, monkeypatch, trusted):
    signed_in(realm_client, monkeypatch)
    key = realm_client.session.session_key
    record = SsoSession.objects.get()

    assert still_signed_in(realm_client)

    assert realm_client.session.session_key == key and realm_client.session[RECORDED_KEY] == key
    assert SsoSession.objects.get() == record and record.session_key == key


def test_a_session_whose_record_went_while_its_key_changed_is_ended_here(
    realm_client, monkeypatch, trusted, settings
):
    """A logout token that came while the key changed found no session under the old key, and took the
    record: nothing is left for the realm to end, so the session ends here."""
    signed_in(realm_client, monkeypatch)
    SsoSession.objects.all().delete()
    rotate_secret_key(settings)

    realm_client.get(reverse("dashboard"))

    assert not still_signed_in(realm_client)


def test_a_password_session_is_not_touched(client, make_user, settings):
    make_user("carol")
    assert client.login(username="carol", password=PASSWORD)
    rotate_secret_key(settings)
    assert client.get(reverse("dashboard")).status_code == 200
    assert RECORDED_KEY not in client.session and not SsoSession.objects.exists()

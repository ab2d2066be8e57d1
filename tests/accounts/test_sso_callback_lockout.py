"""Any web page can make its visitors' browsers send the single sign-on callback a GET (an <img>, without the
session cookie): such an answer, to a browser with no sign-in under way, can guess nothing and must not count
towards locking the address (and everyone behind it) out of every sign-in. A refused answer to a sign-in this
browser did start still counts."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.accounts import lockout
from portfolio.accounts.sso import client as sso_client
from tests.accounts.sso_stand_in import oidc as oidc  # noqa: F401 - the fixture
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db
VISITOR = "10.1.2.3"


def password_sign_in(client):
    return client.post(reverse("login"), {"username": "root", "password": PASSWORD}, REMOTE_ADDR=VISITOR)


def test_cookie_less_callback_requests_from_other_sites_do_not_lock_the_address_out(client, oidc, make_user):
    make_user("root", superuser=True)
    for n in range(lockout.limits()["ip"] + 5):
        client.cookies.clear()
        query = "" if n % 2 else "?state=made-up&code=stolen"
        assert client.get(reverse("sso-callback") + query, REMOTE_ADDR=VISITOR).status_code == 302

    client.cookies.clear()
    response = password_sign_in(client)

    assert response.status_code == 302 and "_auth_user_id" in client.session
    assert not lockout.is_locked(None, VISITOR)


def test_a_refused_answer_to_a_sign_in_under_way_still_counts(client, oidc, make_user, monkeypatch):
    def wrong_code(config, **kwargs):
        raise sso_client.Refused("code_refused", "Acme did not accept this sign-in.")

    monkeypatch.setattr(sso_client, "exchange", wrong_code)
    make_user("root", superuser=True)
    pending = {"nonce": "n", "code_verifier": "v", "redirect_uri": "http://testserver/cb", "next": "/"}
    for _ in range(lockout.limits()["ip"]):
        session = client.session
        session["sso.pending"] = {"under-way": pending}
        session.save()
        response = client.get(f"{reverse('sso-callback')}?state=under-way&code=wrong", REMOTE_ADDR=VISITOR)
        assert response.status_code == 302

    assert lockout.is_locked(None, VISITOR)
    assert password_sign_in(client).status_code == 429

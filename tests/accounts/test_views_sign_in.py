"""Signing in and out: the login page, lockout after failed attempts, htmx calls of an expired session,
the password change, each audited."""

import pytest
from django.core.cache import cache
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from tests.accounts.pages import HTMX, _text
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_failed_logins_left_over():
    # Lockout counters live in the shared cache (Redis), which outlives each test's transaction.
    cache.clear()
    yield
    cache.clear()


def _login(client, username, password, **extra):
    return client.post(reverse("login"), {"username": username, "password": password, **extra})


# --- Sign-in ---------------------------------------------------------------------------------------
def test_anonymous_visitors_are_sent_to_the_login_page(client, org):
    response = client.get("/teams/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/teams/"


def test_machine_paths_are_not_redirected_to_the_login_page(client):
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/healthz").status_code == 200


def test_an_expired_session_sends_htmx_calls_to_the_login_page(client, org, team):
    response = client.post(
        reverse("member-add", args=[team.slug]),
        {},
        HTTP_HX_CURRENT_URL="http://testserver/teams/support-ai/",
        **HTMX,
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/login/?next=/teams/support-ai/"


def test_a_malformed_current_url_header_sends_htmx_calls_to_the_login_page_too(client, org, team):
    """``HX-Current-URL`` is the client's to send: one that is no URL is not a 500."""
    response = client.post(
        reverse("member-add", args=[team.slug]), {}, HTTP_HX_CURRENT_URL="http://[", **HTMX
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/login/?next={reverse('member-add', args=[team.slug])}"


def test_login_works_and_is_audited(client, org):
    response = _login(client, "owner", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    event = AuditEvent.objects.get(action="user.login")
    assert event.actor_label == "owner" and event.object_repr == "owner"
    assert event.actor_user_id == org["owner"].pk


def test_a_sign_in_whose_audit_row_fails_leaves_no_sign_in(client, org, monkeypatch):
    """The sign-in's last_login was committed on its own, then the audit row written in a transaction of its
    own: a failed audit write left a sign-in the trail does not hold."""
    from django.db import DatabaseError

    from portfolio.audit import services as audit

    def failing(actor, action, *args, **kwargs):
        if action == "user.login":
            raise DatabaseError("the audit table is unwritable")
        return real(actor, action, *args, **kwargs)

    real = audit.record
    monkeypatch.setattr(audit, "record", failing)
    client.raise_request_exception = False
    response = _login(client, "owner", PASSWORD)
    assert response.status_code == 500
    org["owner"].refresh_from_db()
    assert org["owner"].last_login is None
    assert client.get("/").status_code == 302, "not signed in"


def test_login_follows_next_only_within_the_site(client, org):
    assert _login(client, "owner", PASSWORD, next="/teams/")["Location"] == "/teams/"
    client.logout()
    assert _login(client, "owner", PASSWORD, next="https://evil.example/")["Location"] == "/"


def test_a_failed_login_is_audited_without_the_password(client, org):
    response = _login(client, "owner", "not-the-password")
    assert response.status_code == 200
    assert "Wrong user name or password" in _text(response)
    event = AuditEvent.objects.get(action="user.login_failed")
    assert (event.object_type, event.object_id, event.object_repr) == ("auth.user", "owner", "owner")
    assert event.actor_user_id is None and event.actor_label == "anonymous"
    for row in AuditEvent.objects.values():
        assert "not-the-password" not in str(row)


def test_five_failed_logins_lock_the_account(client, org):
    for _ in range(5):
        assert _login(client, "owner", "wrong-password-1").status_code == 200
    response = _login(client, "owner", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed attempts, try again later" in _text(response)
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="user.login_failed").count() == 5
    locked = AuditEvent.objects.get(action="user.login_locked")
    assert locked.object_id == "owner"
    assert not AuditEvent.objects.filter(action="user.login").exists()


def test_a_successful_login_resets_the_failure_count(client, org):
    for _ in range(4):
        _login(client, "owner", "wrong-password-1")
    assert _login(client, "owner", PASSWORD).status_code == 302
    client.logout()
    for _ in range(4):
        _login(client, "owner", "wrong-password-1")
    assert _login(client, "owner", PASSWORD).status_code == 302


def test_logout_needs_a_post_and_is_audited(signed_in, org):
    client = signed_in(org["viewer"])
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert AuditEvent.objects.filter(action="user.logout", actor_label="viewer").exists()
    assert client.get("/").status_code == 302


def test_password_change_keeps_the_session_and_is_audited(signed_in, org):
    client = signed_in(org["engineer"])
    new = "a-much-longer-passphrase-42"
    response = client.post(
        reverse("password-change"), {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    org["engineer"].refresh_from_db()
    assert org["engineer"].check_password(new)
    assert AuditEvent.objects.filter(action="user.password_change", actor_label="engineer").exists()


def test_password_change_refuses_a_wrong_current_password_and_a_weak_one(signed_in, org):
    client = signed_in(org["engineer"])
    wrong = client.post(
        reverse("password-change"),
        {"old_password": "nope", "new_password1": "x" * 20, "new_password2": "x" * 20},
    )
    assert "entered incorrectly" in _text(wrong)
    weak = client.post(
        reverse("password-change"),
        {"old_password": PASSWORD, "new_password1": "12345", "new_password2": "12345"},
    )
    assert weak.status_code == 200 and "too short" in _text(weak)
    org["engineer"].refresh_from_db()
    assert org["engineer"].check_password(PASSWORD)


def test_guesses_of_the_current_password_on_the_change_form_are_counted_and_lock(signed_in, org, settings):
    """A session (left open, or stolen) could guess the current password at full speed, nothing counted
    and nothing audited; the guesses count as failed sign-ins, lock the account at the limit and are
    audited as they are."""
    from portfolio.accounts import lockout

    client = signed_in(org["engineer"])
    guess = {"old_password": "nope", "new_password1": "x" * 20, "new_password2": "x" * 20}
    codes = [
        client.post(reverse("password-change"), guess).status_code for _ in range(lockout.limits()["user"])
    ]
    assert codes == [200] * lockout.limits()["user"]
    failed = AuditEvent.objects.filter(action="user.login_failed", object_id="engineer")
    assert failed.count() == lockout.limits()["user"] and failed.first().after == {
        "method": "password_change"
    }
    assert AuditEvent.objects.filter(action="user.login_locked", object_id="engineer").count() == 1
    right = {"old_password": PASSWORD, "new_password1": "a-much-longer-passphrase-42"}
    right["new_password2"] = right["new_password1"]
    locked = client.post(reverse("password-change"), right)
    assert locked.status_code == 429 and "Too many failed attempts" in _text(locked)
    org["engineer"].refresh_from_db()
    assert org["engineer"].check_password(PASSWORD), "refused before the password was looked at"

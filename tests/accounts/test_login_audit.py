"""Failed sign-ins reach the audit trail in bounded numbers: the first failures per account name and
address, one row per lock, a budget per window; the per-address lock itself holds."""

import time

import pytest
from django.urls import reverse

from portfolio.accounts import lockout
from portfolio.accounts.views.auth import audited_name
from portfolio.audit.models import AuditEvent
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _login(client, username, password="wrong-password", ip="198.51.100.7"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def _sign_in_rows():
    return AuditEvent.objects.filter(action__startswith="user.login")


def test_two_hundred_failures_on_one_account_add_its_failures_up_to_the_lock_and_one_locked_row(client, org):
    statuses = [_login(client, "owner").status_code for _ in range(200)]
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
    assert _sign_in_rows().filter(action="user.login_failed").count() == 5
    locked = _sign_in_rows().get(action="user.login_locked")
    assert (locked.object_type, locked.object_id, locked.after["lock"]) == ("auth.user", "owner", "account")
    assert _sign_in_rows().count() == 6


def test_two_hundred_names_sprayed_from_one_address_add_its_first_failures_and_one_address_lock(client, org):
    statuses = [_login(client, f"guess-{n}").status_code for n in range(200)]
    address_limit = lockout.limits()["ip"]
    assert set(statuses[:address_limit]) == {200} and set(statuses[address_limit:]) == {429}
    assert _sign_in_rows().filter(action="user.login_failed").count() == address_limit
    locked = _sign_in_rows().get(action="user.login_locked")
    assert (locked.object_type, locked.object_id, locked.after["lock"]) == (
        "auth.client_address",
        "198.51.100.7",
        "address",
    )
    assert _sign_in_rows().count() == address_limit + 1


def test_two_hundred_failures_from_two_hundred_addresses_stay_within_the_audit_budget(
    client, org, caplog, settings
):
    for n in range(200):
        assert _login(client, f"guess-{n}", ip=f"10.0.{n // 250}.{n % 250 + 1}").status_code == 200
    assert _sign_in_rows().filter(action="user.login_failed").count() == lockout.AUDIT_BUDGET
    paused = AuditEvent.objects.get(action="user.login_audit_paused")
    assert paused.after == {
        "audited_rows": lockout.AUDIT_BUDGET,
        "window_seconds": settings.LOGIN_LOCKOUT_SECONDS,
    }
    assert AuditEvent.objects.count() == lockout.AUDIT_BUDGET + 1 < 200
    assert "Sign-in audit budget spent" in caplog.text


def test_each_lock_is_one_row_however_many_attempts_it_refuses(client, org, settings):
    settings.LOGIN_LOCKOUT_SECONDS = 1
    for _ in range(30):
        _login(client, "owner")
    assert _sign_in_rows().filter(action="user.login_locked").count() == 1
    time.sleep(1.2)  # the lock (and the audit window) runs out; a new lock is a new row
    assert _login(client, "owner", PASSWORD).status_code == 302
    client.logout()
    for _ in range(30):
        _login(client, "owner")
    assert _sign_in_rows().filter(action="user.login_locked").count() == 2
    assert _sign_in_rows().filter(action="user.login_failed").count() == 10


def test_the_audit_budget_is_per_window(client, org, settings, monkeypatch):
    settings.LOGIN_LOCKOUT_SECONDS = 1
    monkeypatch.setattr(lockout, "AUDIT_BUDGET", 3)
    for n in range(6):
        _login(client, f"guess-{n}", ip=f"10.1.0.{n + 1}")
    assert _sign_in_rows().count() == 3 + 1
    time.sleep(1.2)
    _login(client, "fresh-guess", ip="10.1.1.1")
    assert _sign_in_rows().filter(action="user.login_failed").count() == 4


def test_an_address_that_sprayed_names_is_locked_even_for_a_correct_password(client, org):
    for n in range(lockout.limits()["ip"]):
        assert _login(client, f"guess-{n}").status_code == 200
    refused = _login(client, "owner", PASSWORD)
    assert refused.status_code == 429 and "_auth_user_id" not in client.session
    # The lock is on that address, not on the account: the owner signs in from their own.
    assert _login(client, "owner", PASSWORD, ip="203.0.113.20").status_code == 302


def test_failed_sign_ins_below_the_limits_are_all_audited(client, org):
    """A name no account has is recorded by its keyed fingerprint (it may be a password typed in the wrong
    field: tests/accounts/test_failed_sign_in_audit.py)."""
    for name in ["owner", "Owner", "viewer", "nobody"]:
        _login(client, name)
    assert list(_sign_in_rows().order_by("sequence").values_list("object_id", flat=True)) == [
        "owner",
        "Owner",
        "viewer",
        audited_name("nobody"),
    ]


@pytest.mark.django_db(transaction=True)
def test_guesses_sent_at_once_reach_the_password_check_no_more_often_than_the_limit(org, monkeypatch):
    """The lock was read before the slow password hash and a failure counted after it: twenty guesses sent
    at once all passed the read. Each attempt now holds a place while it runs."""
    import threading

    from django.db import connection
    from django.test import Client

    from portfolio.accounts.views import auth

    real, reached, lock = auth.authenticate, [], threading.Lock()

    def slow(request, **credentials):
        with lock:
            reached.append(1)
        time.sleep(0.5)  # every guess is under way at once
        return real(request, **credentials)

    monkeypatch.setattr(auth, "authenticate", slow)
    statuses, start = [], threading.Barrier(20)

    def guess():
        try:
            start.wait(30)
            statuses.append(_login(Client(), "owner").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(reached) == 5 and sorted(statuses) == [200] * 5 + [429] * 15
    assert _login(Client(), "owner", password=PASSWORD).status_code == 429  # locked: five failures

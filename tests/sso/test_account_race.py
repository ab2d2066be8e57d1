"""Two first sign-ins of one person at once (two tabs, a double click on the realm's button): both find no
account, both make one; the second waits on the unique user name, then finds the first's account instead of
failing."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import ExternalIdentity
from portfolio.accounts.sso import services as sso_services
from portfolio.audit.models import AuditEvent

User = get_user_model()
ISSUER = "https://idp.example/realms/portfolio"
CLAIMS = {"sub": "5b0c8a43", "preferred_username": "alice", "email": "alice@example.com", "groups": []}


@pytest.mark.django_db(transaction=True)
def test_two_first_sign_ins_of_one_person_at_once_make_one_account(monkeypatch):
    both_looked = threading.Barrier(2, timeout=30)
    looked = threading.local()
    real_lookup = sso_services._identity

    def lookup_then_wait(issuer: str, subject: str):
        found = real_lookup(issuer, subject)
        if not getattr(looked, "once", False):
            looked.once = True
            both_looked.wait()  # neither makes the account before both have seen none
        return found

    monkeypatch.setattr(sso_services, "_identity", lookup_then_wait)
    users, errors = [], []

    def sign_in():
        try:
            users.append(
                sso_services.account_for(
                    actor=Actor(ip="127.0.0.1"), issuer=ISSUER, claims=dict(CLAIMS), organisation="Acme"
                )
            )
        except Exception as exc:  # reported below, with the other thread's result
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sign_in) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == [] and len(users) == 2
    assert users[0].pk == users[1].pk
    assert User.objects.filter(username="alice").count() == 1 == ExternalIdentity.objects.count()
    assert AuditEvent.objects.filter(action="user.create").count() == 1

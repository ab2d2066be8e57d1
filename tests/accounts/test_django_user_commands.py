"""Django's own ``createsuperuser`` and ``changepassword`` changed accounts with no audit row: the first made
a platform admin, the second reset anyone's password. Found by review. The project's commands of the same
names refuse the first and route the second through the audited service."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError

from portfolio.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_the_projects_commands_are_the_ones_found():
    commands = get_commands()
    assert commands["createsuperuser"] == "portfolio.accounts"
    assert commands["changepassword"] == "portfolio.accounts"


def test_createsuperuser_is_refused_and_makes_no_admin():
    with pytest.raises(CommandError, match="bootstrap_admin"):
        call_command("createsuperuser", "--noinput", "--username", "mallory", "--email", "m@example.com")
    assert not get_user_model().objects.filter(username="mallory").exists()


def test_changepassword_changes_it_through_the_audited_service(org, monkeypatch):
    monkeypatch.setattr(
        "portfolio.accounts.management.commands.changepassword.getpass", lambda prompt: "a-New-pass-phrase-42"
    )
    call_command("changepassword", "viewer")
    viewer = get_user_model().objects.get(username="viewer")
    assert viewer.check_password("a-New-pass-phrase-42")
    row = AuditEvent.objects.get(action="user.password_change", object_repr="viewer")
    assert (row.actor_kind, row.actor_label) == ("system", "system:manage.changepassword")


def test_changepassword_refuses_a_weak_password_and_changes_nothing(org, monkeypatch):
    monkeypatch.setattr("portfolio.accounts.management.commands.changepassword.getpass", lambda prompt: "123")
    before = get_user_model().objects.get(username="viewer").password
    with pytest.raises(CommandError, match="not changed after 3 attempts"):
        call_command("changepassword", "viewer")
    assert get_user_model().objects.get(username="viewer").password == before
    assert not AuditEvent.objects.filter(action="user.password_change").exists()

"""A failed sign-in's audit rows name the account when the name typed is one's, and otherwise a keyed
fingerprint of what was typed: people type their password into the name field, and audit rows reach every
auditor and export. Lockout still counts the name as typed."""

from __future__ import annotations

import zipfile

import pytest
from django.urls import reverse

from portfolio.accounts import lockout
from portfolio.audit.exports import build_export
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

TYPED_PASSWORD = "Sup3r-Secret-Passw0rd!"


def _login(client, username, password="wrong-password", ip="198.51.100.7"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def _failed():
    return AuditEvent.objects.filter(action="user.login_failed").order_by("sequence")


def test_a_password_typed_as_the_user_name_is_not_in_the_audit_row(client, org):
    assert _login(client, TYPED_PASSWORD).status_code == 200
    row = _failed().get()
    assert TYPED_PASSWORD not in row.object_id and TYPED_PASSWORD not in row.object_repr
    assert row.object_id.startswith("unknown-name:") and row.object_type == "auth.user"


def test_the_same_unknown_name_reads_the_same_and_another_differently(client, org):
    for name in [TYPED_PASSWORD, TYPED_PASSWORD, "someone-else"]:
        _login(client, name, ip=f"198.51.100.{len(name)}")
    first, again, other = _failed().values_list("object_id", flat=True)
    assert first == again != other


def test_an_accounts_name_is_audited_as_typed_even_in_another_case(client, org):
    _login(client, "owner")
    _login(client, "Owner")
    assert list(_failed().values_list("object_id", flat=True)) == ["owner", "Owner"]


def test_an_unknown_name_is_still_locked_and_its_lock_row_is_fingerprinted(client, org):
    limit = lockout.limits()["user"]
    statuses = [_login(client, TYPED_PASSWORD, ip=f"203.0.113.{n + 1}").status_code for n in range(limit + 1)]
    assert statuses == [200] * limit + [429]
    locked = AuditEvent.objects.get(action="user.login_locked")
    assert locked.object_id == _failed().first().object_id != TYPED_PASSWORD


def test_the_audit_export_does_not_carry_the_typed_text(client, org):
    _login(client, TYPED_PASSWORD)
    export = build_export(actor=actor_for(org["auditor"]), selection=AuditFilter(), fmt="jsonl")
    try:
        with zipfile.ZipFile(export.path) as archive:
            assert TYPED_PASSWORD not in archive.read("events.jsonl").decode()
    finally:
        export.path.unlink()

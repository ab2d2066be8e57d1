"""A budget's webhook URL is not copied into its audit rows: the path of a Slack-style hook is its
credential, and audit rows reach every auditor and export. The scheme, host and a fingerprint show which
hook it is and that it changed; the budget itself keeps the URL to call."""

from __future__ import annotations

import json
import zipfile

import pytest

from portfolio.audit.exports import build_export
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from portfolio.billing import budgets
from portfolio.billing.models import Budget
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

SECRET_PATH = "/services/T0001/B0001/s3cr3tT0kenXYZ"
HOOK = "https://hooks.example.com" + SECRET_PATH


def _set(org, team, url):
    return budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="100", webhook_url=url)


def test_the_budget_set_row_names_the_webhooks_host_not_its_secret_path(org, team):
    _set(org, team, HOOK)
    after = AuditEvent.objects.get(action="budget.set").after
    assert "s3cr3tT0kenXYZ" not in json.dumps(after)
    assert after["webhook_url"].startswith("https://hooks.example.com (sha256:")
    assert Budget.objects.get(team=team).webhook_url == HOOK  # still the URL the alerts call


def test_a_changed_webhook_path_is_still_visible_in_the_audit_row(org, team):
    _set(org, team, HOOK)
    _set(org, team, HOOK.replace("s3cr3tT0kenXYZ", "n3wT0ken"))
    changed = AuditEvent.objects.filter(action="budget.set").order_by("sequence").last()
    assert changed.before["webhook_url"] != changed.after["webhook_url"]
    assert "n3wT0ken" not in json.dumps(changed.after) and "s3cr3tT0kenXYZ" not in json.dumps(changed.before)


def test_no_webhook_is_audited_as_none(org, team):
    _set(org, team, "")
    assert AuditEvent.objects.get(action="budget.set").after["webhook_url"] == ""


def test_the_budget_delete_row_and_the_export_carry_no_webhook_secret(org, team):
    budget = _set(org, team, HOOK)
    budgets.delete_budget(actor=actor_for(org["admin"]), budget=budget)
    assert "s3cr3tT0kenXYZ" not in json.dumps(AuditEvent.objects.get(action="budget.delete").before)
    export = build_export(actor=actor_for(org["auditor"]), selection=AuditFilter(), fmt="jsonl")
    try:
        with zipfile.ZipFile(export.path) as archive:
            assert "s3cr3tT0kenXYZ" not in archive.read("events.jsonl").decode()
    finally:
        export.path.unlink()

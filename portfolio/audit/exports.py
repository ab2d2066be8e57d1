"""Compliance exports: the selected events as JSONL or CSV in a zip, with a signed manifest.

The manifest names the selection, its count, first/last sequence, the chain head at export time and the
sha256 of the events file, signed with HMAC-SHA256 under the server's audit signing key. ``verify_export``
(and ``manage.py audit_verify_export``) checks all of it offline, without the database.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import chain
from portfolio.audit import services as audit
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid

FORMATS = ("jsonl", "csv")
COLUMNS = (*chain.FIELDS, "hash")
MANIFEST_NAME = "manifest.json"


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"fingerprint:" + key).hexdigest()[:16]


def sign(manifest: dict, key: bytes) -> str:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    return hmac.new(key, chain.canonical_json(unsigned).encode(), hashlib.sha256).hexdigest()


def _row(event: AuditEvent) -> dict:
    row = chain.fields_of(event)
    row["hash"] = event.hash
    return row


def _csv_cell(name: str, value) -> str:
    if value is None:
        return ""
    if name in chain.JSON_FIELDS:
        return chain.canonical_json(value)
    return str(value)


def _write_events(events: Iterator[AuditEvent], fmt: str, out) -> dict:
    """Write rows to a binary file; return count, first/last sequence and the file's sha256."""
    digest, count, first, last = hashlib.sha256(), 0, None, None
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text) if fmt == "csv" else None

    def emit(line: str) -> None:
        digest.update(line.encode())
        text.write(line)

    if writer is not None:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(COLUMNS)
        emit(buffer.getvalue())
    for event in events:
        row = _row(event)
        if writer is not None:
            buffer = io.StringIO()
            csv.writer(buffer).writerow([_csv_cell(name, row[name]) for name in COLUMNS])
            emit(buffer.getvalue())
        else:
            emit(chain.canonical_json(row) + "\n")
        count += 1
        first = row["sequence"] if first is None else first
        last = row["sequence"]
    text.detach()
    return {"count": count, "first_sequence": first, "last_sequence": last, "sha256": digest.hexdigest()}


@dataclass
class Export:
    path: Path
    filename: str
    manifest: dict = field(default_factory=dict)


def build_export(*, actor: Actor, selection: AuditFilter, fmt: str) -> Export:
    """Write the export to a temporary zip file (streamed from the database, never all in memory)."""
    gate.require(actor, "audit.export")
    if fmt not in FORMATS:
        raise Invalid(f"format: choose one of {', '.join(FORMATS)}.")
    events_name = f"events.{fmt}"
    handle = tempfile.NamedTemporaryFile(prefix="audit-export-", suffix=".zip", delete=False)  # noqa: SIM115
    with transaction.atomic():
        # The trail is append-only, so "everything up to the head read now" is a consistent snapshot.
        head = AuditEvent.objects.order_by("-sequence").values("sequence", "hash").first()
        selected = selection.apply(AuditEvent.objects.filter(sequence__lte=head["sequence"] if head else 0))
        events = selected.order_by("sequence").iterator(chunk_size=2000)
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            with archive.open(events_name, "w", force_zip64=True) as out:
                summary = _write_events(events, fmt, out)
            manifest = {
                "kind": "portfolio-audit-export",
                "version": 1,
                "format": fmt,
                "events_file": events_name,
                "events_sha256": summary["sha256"],
                "count": summary["count"],
                "first_sequence": summary["first_sequence"],
                "last_sequence": summary["last_sequence"],
                "filters": selection.describe(),
                "contiguous": selection.is_time_range_only,
                "head_sequence": head["sequence"] if head else None,
                "head_hash": head["hash"] if head else chain.GENESIS_HASH,
                "generated_at": chain.format_time(timezone.now()),
                "generated_by": actor.label,
                "algorithm": "HMAC-SHA256",
                "key_fingerprint": key_fingerprint(settings.AUDIT_SIGNING_KEY),
            }
            manifest["signature"] = sign(manifest, settings.AUDIT_SIGNING_KEY)
            archive.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
    handle.close()
    with transaction.atomic():
        audit.record(
            actor,
            "audit.export",
            object_type="audit.export",
            object_id=manifest["events_sha256"][:16],
            object_repr=f"{fmt} export of {manifest['count']} events",
            after={key: manifest[key] for key in ("format", "count", "first_sequence", "last_sequence",
                                                 "filters", "head_hash", "events_sha256")},
        )
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return Export(path=Path(handle.name), filename=f"audit-export-{stamp}.zip", manifest=manifest)


# --- Offline verification --------------------------------------------------------------------------
@dataclass
class ExportVerdict:
    ok: bool
    problems: list[str]
    count: int = 0


def _parse_csv(lines: Iterator[str]) -> Iterator[dict]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(header) != COLUMNS:
        raise ValueError("the CSV header is not the export's column list")
    for cells in reader:
        row: dict = {}
        for name, cell in zip(COLUMNS, cells, strict=True):
            if name in chain.INT_FIELDS:
                row[name] = int(cell) if cell != "" else None
            elif name in chain.JSON_FIELDS:
                row[name] = json.loads(cell) if cell != "" else None
            else:
                row[name] = cell
        yield row


def verify_export(path: Path, key: bytes) -> ExportVerdict:
    problems: list[str] = []
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return ExportVerdict(False, [f"not a readable export archive: {exc}"])
    with archive:
        try:
            manifest = json.loads(archive.read(MANIFEST_NAME))
        except (KeyError, ValueError) as exc:
            return ExportVerdict(False, [f"manifest missing or unreadable: {exc}"])
        if manifest.get("key_fingerprint") != key_fingerprint(key):
            problems.append("the manifest was signed with a different key than the one given")
        if not hmac.compare_digest(str(manifest.get("signature", "")), sign(manifest, key)):
            problems.append("manifest signature does not match: the manifest was altered or signed elsewhere")
        events_name = manifest.get("events_file", "")
        if events_name not in ("events.jsonl", "events.csv"):
            return ExportVerdict(False, [*problems, "manifest names no events file"])
        raw = archive.read(events_name)
    if hashlib.sha256(raw).hexdigest() != manifest.get("events_sha256"):
        problems.append(f"{events_name} does not match the sha256 in the manifest: rows were altered")
    text = raw.decode("utf-8")
    try:
        if manifest.get("format") == "csv":
            rows = list(_parse_csv(iter(text.splitlines(keepends=True))))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line]
    except (ValueError, KeyError) as exc:
        return ExportVerdict(False, [*problems, f"{events_name} cannot be parsed: {exc}"])
    verdict = chain.verify(rows, contiguous=bool(manifest.get("contiguous")))
    if not verdict.ok:
        problems.append(f"event sequence {verdict.broken_sequence}: {verdict.reason}")
    if len(rows) != manifest.get("count"):
        problems.append(f"the manifest counts {manifest.get('count')} events, the file holds {len(rows)}")
    if rows and (rows[0]["sequence"], rows[-1]["sequence"]) != (
        manifest.get("first_sequence"),
        manifest.get("last_sequence"),
    ):
        problems.append("first/last sequence differ from the manifest")
    return ExportVerdict(not problems, problems, len(rows))

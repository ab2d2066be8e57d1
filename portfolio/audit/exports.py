"""Compliance exports: the selected events as JSONL or CSV in a zip, with a signed manifest.

The manifest names the selection, its count, first/last sequence, the chain head at export time (sequence
and hash: an anchor a later rewrite of history cannot match) and the sha256 of the events file, signed with
the server's Ed25519 key. Other apps' exports (billing statements) are signed by ``signed_files``, a zip of
their files and a manifest of each file's sha256, under the same key. Verifiers need only the public key (``signing_keys`` publishes it):
``portfolio.audit.offline`` checks all of it without the database; see ``exportformat`` for the file format.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import tempfile
import zipfile
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import chain, exportformat, signing
from portfolio.audit import services as audit
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Invalid

FORMATS = tuple(exportformat.EVENT_FILES)

# The most events one export may hold. An export streams from one transaction (its server-side cursor), and
# while a transaction is open PostgreSQL's VACUUM can clean no row that died after it began, on any table:
# a million events take minutes to read, check and zip. A larger selection is refused before anything is
# read or written; export it in parts by time range (each part is signed on its own).
MAX_EXPORT_EVENTS = 1_000_000


def signing_keys() -> list[signing.PublishedKey]:
    """The public keys verifiers may use: this server's current one first, then those it signed with before."""
    return signing.published(settings.AUDIT_SIGNING_KEY, settings.AUDIT_PREVIOUS_PUBLIC_KEYS)


def _private_key():
    private_key = settings.AUDIT_SIGNING_KEY
    if private_key is None:
        raise Conflict(
            "This process holds no audit signing key (PORTFOLIO_AUDIT_SIGNER=false); exports are made by the web.",
            code="no_signing_key",
        )
    return private_key


def signed_files(*, actor: Actor, content: str, about: dict, files: dict[str, bytes]) -> tuple[bytes, dict]:
    """A zip of ``files`` and a manifest naming each one's sha256, signed with the audit key: the zip's bytes
    and the manifest. ``content`` says what the files are (``billing.statement``), ``about`` which one.

    For exports small enough to hold in memory (a statement is a few hundred lines); the caller records the
    export in the audit trail, in its own transaction, since it knows what was exported.
    """
    private_key = _private_key()
    manifest = {
        "kind": exportformat.FILES_KIND,
        "version": exportformat.FILES_VERSION,
        "content": content,
        "about": about,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "generated_at": chain.format_time(timezone.now()),
        "generated_by": actor.label,
        "algorithm": signing.ALGORITHM,
        "key_id": signing.key_id(private_key.public_key()),
    }
    manifest["signature"] = signing.sign(exportformat.signed_payload(manifest), private_key)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(exportformat.MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
    return buffer.getvalue(), manifest


def _row(event: AuditEvent) -> dict:
    row = chain.fields_of(event)
    row["hash"] = event.hash
    return row


CHUNK_ROWS = 2000


class ChainLinks:
    """Checks, as an export streams, that each row is what the chain holds: its own hash, the hash of the
    event before it (its ``prev_hash``) and the ``prev_hash`` of the event after it. A row rewritten with
    its own hash recomputed breaks the next event's link, which a filtered export (or one ending there) does
    not carry: it is looked up, so the signature never vouches for a row the database's verify would refuse.

    Rows come in chunks (``check``, then ``finish``); the neighbours a chunk does not carry are read in one
    query per chunk, so a filtered export of a million rows costs hundreds of queries, not millions."""

    def __init__(self, head_sequence: int):
        self.head = head_sequence
        self.previous: tuple[int, str] | None = None  # the last row checked: (sequence, hash)
        self.pending: dict | None = None  # the last row checked, whose link out waits for the next chunk

    def check(self, rows: list[dict]) -> None:
        """A chunk of rows in sequence order, following the chunk checked before it."""
        if not rows:
            return
        befores = []
        previous = self.previous[0] if self.previous else None
        for row in rows:
            if row["sequence"] - 1 != previous:
                befores.append(row["sequence"] - 1)
            previous = row["sequence"]
        outgoing = ([self.pending] if self.pending else []) + rows  # each row with the one streamed after it
        afters = [row for row, after in itertools.pairwise(outgoing) if self._leaves(row, after["sequence"])]
        stored = self._stored(befores + [row["sequence"] + 1 for row in afters])
        for row in rows:
            sequence = row["sequence"]
            if chain.compute_hash(row) != row["hash"]:
                self._broken(sequence, "its hash does not match its contents")
            before: str | None
            if self.previous and self.previous[0] == sequence - 1:
                before = self.previous[1]
            else:
                before = chain.GENESIS_HASH if sequence <= 1 else stored.get(sequence - 1, (None, None))[0]
            if before != row["prev_hash"]:
                self._broken(sequence, "its previous hash does not match the event before")
            self.previous = (sequence, row["hash"])
        for row in afters:
            self._check_link_out(row, stored)
        self.pending = rows[-1]

    def finish(self) -> None:
        """The link out of the last row of the stream."""
        if self.pending and self._leaves(self.pending, None):
            self._check_link_out(self.pending, self._stored([self.pending["sequence"] + 1]))
        self.pending = None

    def _leaves(self, row: dict, next_sequence: int | None) -> bool:
        """Whether ``row``'s successor is in the chain but not the next row streamed (checked as that row)."""
        return row["sequence"] < self.head and next_sequence != row["sequence"] + 1

    def _check_link_out(self, row: dict, stored: dict[int, tuple[str, str]]) -> None:
        if stored.get(row["sequence"] + 1, (None, None))[1] != row["hash"]:
            self._broken(row["sequence"], "the event after it does not link to it")

    @staticmethod
    def _stored(sequences: list[int]) -> dict[int, tuple[str, str]]:
        """(hash, prev_hash) of the events at ``sequences``, in one query."""
        wanted = [sequence for sequence in sequences if sequence >= 1]
        if not wanted:
            return {}
        rows = AuditEvent.objects.filter(sequence__in=wanted).values_list("sequence", "hash", "prev_hash")
        return {sequence: (hash_, prev_hash) for sequence, hash_, prev_hash in rows}

    @staticmethod
    def _broken(sequence: int, why: str):
        raise Conflict(
            f"The audit trail does not verify at event #{sequence} ({why}): nothing was exported or signed. "
            "Run `manage.py audit_verify` and investigate."
        )


def _write_events(events: Iterator[AuditEvent], fmt: str, out, links: ChainLinks) -> dict:
    """Write rows to a binary file, each chunk checked against the chain before it is written; return count,
    first/last sequence and the file's sha256."""
    digest, count, first, last = hashlib.sha256(), 0, None, None
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)

    def emit(line: str) -> None:
        digest.update(line.encode())
        text.write(line)

    def csv_line(cells) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(cells)
        return buffer.getvalue()

    def write(rows: list[dict]) -> None:
        links.check(rows)
        for row in rows:
            emit(csv_line(exportformat.csv_cells(row)) if fmt == "csv" else chain.canonical_json(row) + "\n")

    if fmt == "csv":
        emit(csv_line(exportformat.COLUMNS))
    chunk: list[dict] = []
    for event in events:
        row = _row(event)
        chunk.append(row)
        count += 1
        first = row["sequence"] if first is None else first
        last = row["sequence"]
        if len(chunk) == CHUNK_ROWS:
            write(chunk)
            chunk = []
    write(chunk)
    links.finish()
    text.detach()
    return {"count": count, "first_sequence": first, "last_sequence": last, "sha256": digest.hexdigest()}


@dataclass
class Export:
    path: Path
    filename: str
    manifest: dict = field(default_factory=dict)


def _selected(selection: AuditFilter, head: Mapping[str, Any] | None) -> QuerySet[AuditEvent]:
    """The selection's events up to ``head``: the trail is append-only and a sequence is committed only after
    every one below it, so this set never changes once the head is read (a consistent snapshot)."""
    return selection.apply(AuditEvent.objects.filter(sequence__lte=head["sequence"] if head else 0))


def _refuse_oversized(selection: AuditFilter, head: Mapping[str, Any] | None) -> None:
    """Refuse, before any file or transaction is opened, a selection of more than ``MAX_EXPORT_EVENTS``.

    Counted no further than one past the bound (a LIMIT in a subquery), so the check costs at most what the
    export itself would have read."""
    limit = MAX_EXPORT_EVENTS
    if _selected(selection, head).order_by()[: limit + 1].count() > limit:
        raise Invalid(
            f"This export would hold more than {limit:,} events, the most one export may hold. Narrow the "
            "time range (since/until) or the other filters, and export the rest in further parts.",
            code="export_too_large",
        )


def _write_archive(
    handle,
    actor: Actor,
    selection: AuditFilter,
    fmt: str,
    private_key,
    events_name: str,
    head: Mapping[str, Any] | None,
) -> dict:
    """The events and the signed manifest into ``handle``'s zip, from one snapshot of the trail."""
    # The transaction is what a server-side cursor needs (outside one, Django declares it WITH HOLD and
    # PostgreSQL copies the whole result when the statement commits); its length is what MAX_EXPORT_EVENTS
    # bounds. It takes no lock: the chain's lock is taken only by the audit row written after it.
    with transaction.atomic():
        selected = _selected(selection, head)
        events = cast(
            Generator[AuditEvent, None, None], selected.order_by("sequence").iterator(chunk_size=CHUNK_ROWS)
        )
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            with archive.open(events_name, "w", force_zip64=True) as out:
                try:
                    summary = _write_events(events, fmt, out, ChainLinks(head["sequence"] if head else 0))
                finally:
                    events.close()  # its server-side cursor, closed inside the transaction even on a refusal
            manifest = {
                "kind": exportformat.EVENTS_KIND,
                "version": exportformat.FORMAT_VERSION,
                "format": fmt,
                "events_file": events_name,
                "events_sha256": summary["sha256"],
                "count": summary["count"],
                "first_sequence": summary["first_sequence"],
                "last_sequence": summary["last_sequence"],
                "filters": selection.describe(),
                "contiguous": selection.is_time_range_only,
                "head_sequence": head["sequence"] if head else 0,
                "head_hash": head["hash"] if head else chain.GENESIS_HASH,
                "generated_at": chain.format_time(timezone.now()),
                "generated_by": actor.label,
                "algorithm": signing.ALGORITHM,
                "key_id": signing.key_id(private_key.public_key()),
            }
            if fmt == "csv":
                manifest["csv_cells"] = exportformat.CSV_CELLS_NOTE
            manifest["signature"] = signing.sign(exportformat.signed_payload(manifest), private_key)
            archive.writestr(exportformat.MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def build_export(*, actor: Actor, selection: AuditFilter, fmt: str) -> Export:
    """Write the export to a temporary zip file (streamed from the database, never all in memory).

    A selection of more than ``MAX_EXPORT_EVENTS`` events is refused (``export_too_large``) up front."""
    gate.require(actor, "audit.export")
    if fmt not in FORMATS:
        raise Invalid(f"format: choose one of {', '.join(FORMATS)}.")
    private_key = _private_key()
    events_name = exportformat.EVENT_FILES[fmt]
    head = AuditEvent.objects.order_by("-sequence").values("sequence", "hash").first()
    _refuse_oversized(selection, head)
    handle = tempfile.NamedTemporaryFile(prefix="audit-export-", suffix=".zip", delete=False)  # noqa: SIM115
    try:
        manifest = _write_archive(handle, actor, selection, fmt, private_key, events_name, head)
        handle.close()
        _record_export(actor, fmt, manifest)
    except BaseException:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)  # a refused, failed or unaudited export leaves no file
        raise
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return Export(path=Path(handle.name), filename=f"audit-export-{stamp}.zip", manifest=manifest)


def _record_export(actor: Actor, fmt: str, manifest: dict) -> None:
    with transaction.atomic():
        audit.record(
            actor,
            "audit.export",
            object_type="audit.export",
            object_id=manifest["events_sha256"][:16],
            object_repr=f"{fmt} export of {manifest['count']} events",
            after={
                key: manifest[key]
                for key in (
                    "format",
                    "count",
                    "first_sequence",
                    "last_sequence",
                    "filters",
                    "head_sequence",
                    "head_hash",
                    "events_sha256",
                    "key_id",
                )
            },
        )

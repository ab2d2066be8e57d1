"""Verifying an audit export offline, with nothing but the archive and the signer's public key.

No Django settings, no database, no private key: an auditor runs

    python -m portfolio.audit.offline audit-export-....zip --public-key-file audit-signing-key.pub

on any machine with this code base (``manage.py audit_verify_export`` calls the same function). It checks
the manifest's Ed25519 signature under the key the manifest names, the events file's sha256, every event's
hash, the links between consecutive events for an export filtered only by time, and the counts and range
the manifest states. The events file is streamed, so an export of any size verifies in constant memory.

A signature proves only that the server exported these rows: one whose history a database superuser
rewrote and rehashed to the head exports, signs and verifies as well. Anchors (``anchors``: chain heads
logged by ``tasks.anchor_head`` or stated by earlier manifests, kept where that superuser cannot reach) catch
it: with ``--anchor SEQUENCE:HASH`` or ``--anchors-from LOGFILE``, the export's row of each anchored sequence
(or the chain head its manifest states) must carry the anchored hash. An anchor the export does not reach
is reported as not covered, never as a pass.

The same command verifies other apps' signed exports (a manifest of kind ``exportformat.FILES_KIND``, such
as a billing statement's CSV and PDF): the signature, each file's sha256, and that the archive holds no file
the manifest does not name.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import struct
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from portfolio.audit import chain, exportformat, signing
from portfolio.audit.anchors import Anchor, from_options

MAX_MANIFEST_BYTES = 1024 * 1024  # a manifest is a few hundred bytes; refuse to inflate a hostile one
# An event's before/after is as long as what changed (a system prompt, a rubric): Python's csv reads no cell
# over 131,072 characters by default. One row is held in memory at a time, so the bound is per row.
MAX_CSV_CELL_CHARS = 64 * 1024 * 1024


@dataclass
class ExportVerdict:
    ok: bool
    problems: list[str]
    count: int = 0
    key_id: str = ""
    head_sequence: int | None = None
    head_hash: str = ""
    content: str = ""  # a files export: what it holds (e.g. billing.statement) and the files' names
    files: list[str] = field(default_factory=list)
    contiguous: bool = True  # False: a filtered export, whose rows' links and completeness cannot be checked
    filters: dict = field(default_factory=dict)
    anchors_checked: int = 0
    anchors_not_covered: list[int] = field(default_factory=list)  # their sequences


class _HashingReader(io.RawIOBase):
    """Passes a binary stream through while hashing every byte read."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.digest = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> str:
        while self.raw.read(1 << 20):
            pass
        return self.digest.hexdigest()


class _Tally:
    """Counts the rows passing through and remembers the first and last, for the manifest's claims, and the
    hashes of the rows at anchored sequences."""

    def __init__(self, rows: Iterable[dict], anchored: frozenset[int] = frozenset()):
        self.rows, self.count = rows, 0
        self.first: dict | None = None
        self.last: dict | None = None
        self.anchored = anchored
        self.hashes: dict[int, str] = {}

    def __iter__(self) -> Iterator[dict]:
        for row in self.rows:
            self.count += 1
            self.first = row if self.first is None else self.first
            self.last = row
            if row["sequence"] in self.anchored:
                self.hashes[row["sequence"]] = row["hash"]
            yield row


def _rows(text: IO[str], fmt: str, version: int) -> Iterator[dict]:
    if fmt == "csv":
        limit = csv.field_size_limit(MAX_CSV_CELL_CHARS)  # process-wide: put back when the walk ends
        try:
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None or tuple(header) != exportformat.COLUMNS:
                raise ValueError("the CSV header is not the export's column list")
            for cells in reader:
                yield exportformat.row_from_csv(cells, escaped=version >= 2)
        except csv.Error as exc:
            raise ValueError(f"a row is not readable CSV: {exc}") from exc
        finally:
            csv.field_size_limit(limit)
    else:
        for line in text:
            if line.strip():
                yield json.loads(line)


def _signature_problems(manifest: dict, keys: dict[str, Ed25519PublicKey]) -> list[str]:
    if manifest.get("algorithm") != signing.ALGORITHM:
        return [
            f"the manifest is signed with {manifest.get('algorithm')!r}, not Ed25519: the retired HMAC scheme "
            "lets anyone who can verify also forge, so it proves nothing; export again from the server"
        ]
    claimed = str(manifest.get("key_id", ""))
    if claimed not in keys:
        known = ", ".join(sorted(keys)) or "none"
        return [
            f"the manifest names signing key {claimed!r}, which is not among the public keys given ({known})"
        ]
    if not signing.signature_holds(
        exportformat.signed_payload(manifest), str(manifest.get("signature", "")), keys[claimed]
    ):
        return ["manifest signature does not match: the manifest was altered or signed with another key"]
    return []


def verify_export(
    path: Path, public_keys: Iterable[Ed25519PublicKey], anchors: Iterable[Anchor] = ()
) -> ExportVerdict:
    keys = {signing.key_id(key): key for key in public_keys}
    unique = list(dict.fromkeys(anchors))  # a quiet chain logs the same head every few minutes
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return ExportVerdict(False, [f"not a readable export archive: {exc}"])
    with archive:
        try:
            if archive.getinfo(exportformat.MANIFEST_NAME).file_size > MAX_MANIFEST_BYTES:
                raise ValueError("the manifest is implausibly large")
            manifest = json.loads(archive.read(exportformat.MANIFEST_NAME))
            if not isinstance(manifest, dict):
                raise ValueError("the manifest is not a JSON object")
        except (KeyError, ValueError) as exc:
            return ExportVerdict(False, [f"manifest missing or unreadable: {exc}"])
        verdict = ExportVerdict(
            True,
            _signature_problems(manifest, keys) + _duplicate_names(archive) + _unlisted_bytes(path, archive),
            key_id=str(manifest.get("key_id", "")),
            head_sequence=manifest.get("head_sequence"),
            head_hash=str(manifest.get("head_hash", "")),
        )
        if manifest.get("kind") == exportformat.FILES_KIND:
            _check_files(archive, manifest, verdict)
            verdict.anchors_not_covered = [anchor.sequence for anchor in unique]
            verdict.ok = not verdict.problems
            return verdict
        fmt = str(manifest.get("format"))
        events_name = exportformat.EVENT_FILES.get(fmt)
        if events_name is None or manifest.get("events_file") != events_name:
            verdict.problems.append("manifest names no events file")
        else:
            try:
                _check_events(archive, events_name, fmt, manifest, verdict, unique)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                verdict.problems.append(f"{events_name} cannot be read from the archive: {exc}")
            _check_nothing_else(archive, {events_name}, verdict)
    verdict.ok = not verdict.problems
    return verdict


def _check_files(archive: zipfile.ZipFile, manifest: dict, verdict: ExportVerdict) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
        verdict.problems.append("the manifest names no files")
        return
    verdict.content = str(manifest.get("content", ""))
    for name, expected in files.items():
        try:
            with archive.open(name) as member:
                digest = hashlib.sha256()
                while chunk := member.read(1 << 20):
                    digest.update(chunk)
        except KeyError:
            verdict.problems.append(f"{name} is missing from the archive")
            continue
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            verdict.problems.append(f"{name} cannot be read from the archive: {exc}")
            continue
        if digest.hexdigest() != expected:
            verdict.problems.append(f"{name} does not match the sha256 in the manifest: it was altered")
    _check_nothing_else(archive, set(files), verdict)
    verdict.files = sorted(files)


def _check_nothing_else(archive: zipfile.ZipFile, named: set[str], verdict: ExportVerdict) -> None:
    """A file the manifest does not name (a forged events.csv beside the signed events.jsonl) is refused:
    a person or another tool may read it as the export."""
    unnamed = sorted(set(archive.namelist()) - named - {exportformat.MANIFEST_NAME})
    if unnamed:
        verdict.problems.append(f"the archive holds files the manifest does not name: {', '.join(unnamed)}")


def _duplicate_names(archive: zipfile.ZipFile) -> list[str]:
    """Python reads the last of two members of one name, other tools the first: a forged copy placed beside
    the signed one would be what some readers see."""
    names = archive.namelist()
    twice = sorted({name for name in names if names.count(name) > 1})
    return [f"the archive holds more than one file named {name}" for name in twice]


# A local file header: signature, versions, flags, method, time, date, crc, sizes, name and extra lengths.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
# After an entry whose sizes follow its data (flag bit 3): crc and two sizes of 4 or 8 bytes, with or without
# their signature.
_DESCRIPTOR_SIZES = {0, 12, 16, 20, 24}


def _unlisted_bytes(path: Path, archive: zipfile.ZipFile) -> list[str]:
    """Bytes of the archive that no entry of its central directory accounts for: a forged entry placed
    between the listed ones and the directory (or bytes in front of the archive) is what tools that read
    local headers one after another (``ZipInputStream``, ``jar``) show, while Python reads the directory."""
    entries = sorted(archive.infolist(), key=lambda info: info.header_offset)
    ends = [info.header_offset for info in entries[1:]] + [archive.start_dir]
    if not entries or entries[0].header_offset != 0:
        return ["the archive holds bytes before its first file that its directory does not list"]
    with path.open("rb") as raw:
        for info, following in zip(entries, ends, strict=True):
            raw.seek(info.header_offset)
            header = raw.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                return [f"the archive's entry for {info.filename} is not where its directory says"]
            fields = _LOCAL_HEADER.unpack(header)
            data_end = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11] + info.compress_size
            gap = following - data_end
            if gap != 0 and not (info.flag_bits & 0x08 and gap in _DESCRIPTOR_SIZES):
                return [f"the archive holds bytes after {info.filename} that its directory does not list"]
    return []


def _check_events(
    archive: zipfile.ZipFile,
    name: str,
    fmt: str,
    manifest: dict,
    verdict: ExportVerdict,
    anchors: list[Anchor],
) -> None:
    try:
        member = archive.open(name)
    except KeyError:
        verdict.problems.append(f"{name} is missing from the archive")
        return
    version = manifest["version"] if isinstance(manifest.get("version"), int) else 1
    with member:
        hashed = _HashingReader(member)
        text = io.TextIOWrapper(
            io.BufferedReader(hashed), encoding="utf-8", newline="" if fmt == "csv" else None
        )
        tally = _Tally(_rows(text, fmt, version), frozenset(anchor.sequence for anchor in anchors))
        verdict.contiguous = bool(manifest.get("contiguous"))
        filters = manifest.get("filters")
        verdict.filters = filters if isinstance(filters, dict) else {}
        try:
            result = chain.verify(tally, contiguous=verdict.contiguous)
        except (ValueError, KeyError, TypeError) as exc:
            result = None
            verdict.problems.append(f"{name} cannot be parsed near event {tally.count + 1}: {exc}")
        if result is not None and not result.ok:
            verdict.problems.append(f"event sequence {result.broken_sequence}: {result.reason}")
        # The sha256 covers the whole file even when a row broke the walk early.
        sha256 = hashed.drain()
    if sha256 != manifest.get("events_sha256"):
        verdict.problems.append(f"{name} does not match the sha256 in the manifest: rows were altered")
    if result is None or not result.ok:
        return  # the walk stopped early: counts and range say nothing more
    verdict.count = tally.count
    if tally.count != manifest.get("count"):
        verdict.problems.append(
            f"the manifest counts {manifest.get('count')} events, the file holds {tally.count}"
        )
    first = tally.first["sequence"] if tally.first else None
    last = tally.last["sequence"] if tally.last else None
    if (first, last) != (manifest.get("first_sequence"), manifest.get("last_sequence")):
        verdict.problems.append("first/last sequence differ from the manifest")
    if (
        tally.last
        and last == manifest.get("head_sequence")
        and tally.last["hash"] != manifest.get("head_hash")
    ):
        verdict.problems.append("the last event's hash differs from the chain head the manifest states")
    _check_anchors(anchors, tally.hashes, manifest, verdict)


def _check_anchors(
    anchors: list[Anchor], hashes: dict[int, str], manifest: dict, verdict: ExportVerdict
) -> None:
    """Each anchor against the export's row of its sequence, or the chain head the signed manifest states (the
    database's at export time). Either carries the hash of the whole history up to it: another hash than the
    anchored one means that history was rewritten after the anchor was taken."""
    stated = dict(hashes)
    if isinstance(manifest.get("head_sequence"), int):
        stated.setdefault(manifest["head_sequence"], str(manifest.get("head_hash", "")))
    for anchor in anchors:
        if anchor.sequence == 0:
            verdict.anchors_checked += 1  # the chain was empty when it was taken, as every chain once was
        elif anchor.sequence not in stated:
            verdict.anchors_not_covered.append(anchor.sequence)
        elif stated[anchor.sequence] != anchor.hash:
            verdict.problems.append(
                f"anchor at sequence {anchor.sequence}: the export's event carries another hash than the "
                "anchored one, the history up to it was rewritten"
            )
        else:
            verdict.anchors_checked += 1


# --- Command line -------------------------------------------------------------------------------------
def read_public_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    keys: list[Ed25519PublicKey] = []
    for path in paths:
        keys += signing.load_public_keys(path.read_text())
    return keys


def report(verdict: ExportVerdict) -> str:
    if not verdict.ok:
        return "Export does NOT verify:\n  - " + "\n  - ".join(verdict.problems)
    if verdict.files:
        text = (
            f"Export verified: {verdict.content or 'files'} ({', '.join(verdict.files)}), every file matches "
            f"its sha256, signature valid (Ed25519 key {verdict.key_id})."
        )
    else:
        text = (
            f"Export verified: {verdict.count} events, signature valid (Ed25519 key {verdict.key_id}). "
            f"Chain head at export: sequence {verdict.head_sequence}, hash {verdict.head_hash}."
        )
    if not verdict.files and not verdict.contiguous:
        filters = ", ".join(f"{key}={value}" for key, value in sorted(verdict.filters.items()))
        text += (
            f"\nFiltered export ({filters or 'no filters stated'}): its rows are genuine chain rows (each one's "
            "hash holds), but the links between them and whether every event matching the filters is there "
            "were NOT checked."
        )
    if verdict.anchors_checked or verdict.anchors_not_covered:
        missed = verdict.anchors_not_covered
        text += f"\nAnchors: {verdict.anchors_checked} checked and matching, {len(missed)} not covered" + (
            f" by this export (sequence {', '.join(map(str, missed))}): not checked." if missed else "."
        )
    return text


def add_anchor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--anchor`` and ``--anchors-from``, for this command line and ``manage.py audit_verify_export``."""
    parser.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQUENCE:HASH",
        help="a chain head recorded earlier (an anchor log line's, an earlier manifest's "
        "head_sequence:head_hash): the export's event of that sequence must carry that hash; repeatable",
    )
    parser.add_argument(
        "--anchors-from",
        type=Path,
        metavar="LOGFILE",
        help="a log file holding 'audit-anchor sequence=N hash=H' lines; every one is checked",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m portfolio.audit.offline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("file", type=Path, help="the export .zip")
    parser.add_argument(
        "--public-key-file",
        type=Path,
        action="append",
        required=True,
        help="the signer's public key (PEM, ssh-ed25519 or base64); repeat, or put several in one file",
    )
    add_anchor_arguments(parser)
    args = parser.parse_args(argv)
    try:
        keys = read_public_keys(args.public_key_file)
    except (OSError, signing.UnreadableKey) as exc:
        print(f"Cannot read the public key: {exc}", file=sys.stderr)
        return 2
    try:
        anchors = from_options(args.anchor, args.anchors_from)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    verdict = verify_export(args.file, keys, anchors)
    print(report(verdict), file=sys.stdout if verdict.ok else sys.stderr)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())

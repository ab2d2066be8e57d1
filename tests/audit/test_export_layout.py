"""Every byte of an export is one its directory lists (found by review): Python reads an archive's central
directory, while tools that read local headers one after another (Java's ``ZipInputStream``, ``jar x``) also
find an entry placed between the listed ones and the directory, and show its forged rows as the export's."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from portfolio.audit.offline import verify_export
from tests.audit import test_exports
from tests.audit.test_exports import _export, server_public_keys

pytestmark = pytest.mark.django_db
history = test_exports.history  # the same fixture
FORGED = b'{"sequence": 1, "action": "apikey.create"}\n'


def _end_of_directory(data: bytes) -> tuple[int, int]:
    """Where the end-of-directory record is, and the directory's offset it records."""
    end = data.rfind(b"PK\x05\x06")
    return end, struct.unpack("<I", data[end + 16 : end + 20])[0]


def _forged_entry() -> bytes:
    """A stored events.jsonl entry's local header and data, as another archive writes them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("events.jsonl", FORGED)
    data = buffer.getvalue()
    return data[: _end_of_directory(data)[1]]


def test_an_entry_the_directory_does_not_list_fails(history):
    export = _export(history)
    data = export.path.read_bytes()
    end, directory = _end_of_directory(data)
    forged = _forged_entry()
    tail = bytearray(data[end:])
    struct.pack_into("<I", tail, 16, directory + len(forged))
    export.path.write_bytes(data[:directory] + forged + data[directory:end] + bytes(tail))
    with zipfile.ZipFile(export.path) as archive:
        assert archive.read("events.jsonl") != FORGED, "Python reads the listed entry"

    verdict = verify_export(export.path, server_public_keys())

    assert not verdict.ok and "bytes after" in " ".join(verdict.problems), verdict.problems


def test_bytes_before_the_archive_fail(history):
    export = _export(history)
    export.path.write_bytes(_forged_entry() + export.path.read_bytes())  # zipfile allows a prefix

    verdict = verify_export(export.path, server_public_keys())

    assert not verdict.ok and "before its first file" in " ".join(verdict.problems), verdict.problems


def test_an_export_written_as_a_stream_still_verifies(history, tmp_path):
    """Entries written to a stream carry their sizes after their data (flag bit 3): those bytes are listed."""

    class Unseekable(io.RawIOBase):
        def __init__(self, sink):
            self.sink = sink

        def writable(self) -> bool:
            return True

        def write(self, chunk) -> int:
            return self.sink.write(chunk)

    export = _export(history)
    with zipfile.ZipFile(export.path) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    streamed: Path = tmp_path / "streamed.zip"
    with streamed.open("wb") as sink, zipfile.ZipFile(Unseekable(sink), "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            with archive.open(info.filename, "w") as member:
                member.write(data)
    with zipfile.ZipFile(streamed) as archive:
        assert all(info.flag_bits & 0x08 for info in archive.infolist())

    assert verify_export(streamed, server_public_keys()).ok

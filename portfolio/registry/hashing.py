"""Streaming sha256 of files and the manifest that names an artifact."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


def sha256_file(path: Path, progress=None) -> str:
    with path.open("rb") as handle:
        return sha256_stream(handle, progress=progress)[0]


def sha256_stream(stream: BinaryIO, sink: BinaryIO | None = None, progress=None) -> tuple[str, int]:
    """Hash a stream chunk by chunk (optionally copying it to ``sink``, telling ``progress`` of each chunk's
    bytes); return (sha256, size)."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
        if progress:
            progress(len(chunk))
    return digest.hexdigest(), size


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The files of an artifact; its id is the sha256 of this list in canonical form."""

    files: tuple[FileEntry, ...]

    @classmethod
    def of(cls, entries: Iterable[FileEntry]) -> Manifest:
        return cls(tuple(sorted(entries, key=lambda entry: entry.path)))

    def to_json(self) -> str:
        rows = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files]
        return json.dumps({"files": rows}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        rows = json.loads(text)["files"]
        return cls.of(FileEntry(row["path"], int(row["size"]), row["sha256"]) for row in rows)

    @property
    def artifact_id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def get(self, path: str) -> FileEntry | None:
        return next((entry for entry in self.files if entry.path == path), None)

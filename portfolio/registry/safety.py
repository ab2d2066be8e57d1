"""Refusing what could hurt the server: paths outside the import roots, symlinks, zip-slip, zip bombs."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from django.conf import settings

from portfolio.errors import Invalid
from portfolio.registry import jsonfiles

MAX_ZIP_ENTRIES = 10_000
MAX_IMPORT_FILES = MAX_ZIP_ENTRIES  # the files of a version, from whichever source
MAX_COMPRESSION_RATIO = 200


def resolve_import_path(raw: str, *, roots: list[Path] | None = None) -> Path:
    """The real path of a server file/folder to import, only if it lies under an admin-configured root.

    ``..`` and symbolic links anywhere in the path are refused outright rather than resolved, so the
    answer never depends on what a link points to at the moment of the check.
    """
    roots = roots if roots is not None else settings.IMPORT_ROOTS
    if not raw or "\x00" in raw:
        raise Invalid("path: Give a path on the server.")
    candidate = Path(raw)
    if not candidate.is_absolute():
        raise Invalid("path: Give an absolute path under one of the import folders.")
    if ".." in candidate.parts:
        raise Invalid("path: '..' is not allowed in import paths.")
    current = Path(candidate.anchor)
    for part in candidate.parts[1:]:
        current = current / part
        if current.is_symlink():
            raise Invalid(f"path: {current} is a symbolic link; links are refused.")
    if not any(candidate == root or root in candidate.parents for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "(none configured)"
        raise Invalid(f"path: {candidate} is outside the import folders ({allowed}).")
    if not candidate.exists():
        raise Invalid(f"path: {candidate} does not exist.")
    return candidate


def refuse_links_inside(folder: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise Invalid(f"path: {path.relative_to(folder)} is a symbolic link; links are refused.")
            if not path.is_dir() and not stat.S_ISREG(path.lstat().st_mode):
                raise Invalid(f"path: {path.relative_to(folder)} is not a regular file.")


def safe_extract(archive_path: Path, destination: Path, *, max_bytes: int | None = None) -> list[str]:
    """Extract a zip refusing absolute paths, '..', links, special files, too many entries and bombs.

    Checks the declared sizes first, then counts real bytes while writing (a lying header cannot get
    past the limit). Nothing is left behind on refusal: the caller's temporary folder is discarded.
    """
    limit = max_bytes or settings.MAX_UPLOAD_BYTES
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as exc:
        raise Invalid("file: Not a zip archive.") from exc
    written: list[str] = []
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ZIP_ENTRIES:
            raise Invalid(
                f"file: The archive has {len(entries)} entries; at most {MAX_ZIP_ENTRIES} are allowed."
            )
        declared = sum(entry.file_size for entry in entries)
        if declared > limit:
            raise Invalid(f"file: The archive expands to {declared} bytes; the limit is {limit}.")
        for entry in entries:
            name = entry.filename
            pure = PurePosixPath(name)
            if (
                name.startswith(("/", "\\"))
                or "\\" in name
                or ".." in pure.parts
                or (pure.parts and ":" in pure.parts[0])
            ):
                raise Invalid(f"file: Unsafe path in archive: {name!r}.")
            mode = (entry.external_attr >> 16) & 0o170000
            if mode and mode not in (stat.S_IFREG, stat.S_IFDIR):
                raise Invalid(f"file: {name!r} is a link or special file; only regular files are allowed.")
            if entry.compress_size and entry.file_size / entry.compress_size > MAX_COMPRESSION_RATIO:
                raise Invalid(
                    f"file: {name!r} is compressed {entry.file_size // entry.compress_size}:1, a zip bomb."
                )
            # A config is read whole later: refuse one past its cap now rather than write it out first
            # (a header that lies is caught when the extracted folder is inspected).
            cap = jsonfiles.CAPS.get(pure.name)
            if cap is not None and entry.file_size > cap:
                raise Invalid(f"file: {jsonfiles.FileTooLarge(name, entry.file_size, cap)}")
        total = 0
        for entry in entries:
            if entry.is_dir():
                continue
            target = destination / PurePosixPath(entry.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(entry) as source, target.open("wb") as out:
                while chunk := source.read(1024 * 1024):
                    total += len(chunk)
                    if total > limit:
                        raise Invalid(f"file: The archive expands beyond the limit of {limit} bytes.")
                    out.write(chunk)
            written.append(PurePosixPath(entry.filename).as_posix())
    return written

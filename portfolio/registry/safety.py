"""Refusing what could hurt the server: paths outside the import roots, symlinks, zip-slip, zip bombs.

An import folder is the engineers' to write while it is read: a file or folder checked once can be swapped
for a link (to a secret of the worker's) before it is read again. So what is read from one is opened one
part of its path at a time with no link followed (``open_unlinked``), and read from that handle only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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


# Each part is opened beneath the folder opened before it, never through a link (O_NOFOLLOW); the last with
# O_NONBLOCK, so that a FIFO put there answers at once instead of holding the worker.
_PARENT = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LAST = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open(path: str | Path, beneath: int | None) -> int:
    pure = PurePosixPath(path)
    if beneath is None and not pure.is_absolute():
        raise ValueError(f"{path} is not an absolute path.")
    parts = pure.parts[1:] if beneath is None else pure.parts
    current = os.open("/", _PARENT) if beneath is None else os.dup(beneath)
    try:
        for index, part in enumerate(parts):
            shown = PurePosixPath(*pure.parts[: index + 1 + (beneath is None)])
            if part == "..":
                raise ValueError(f"{shown}: '..' is refused.")
            try:
                opened = os.open(part, _LAST if index == len(parts) - 1 else _PARENT, dir_fd=current)
            except OSError as exc:
                if exc.errno == errno.ELOOP or _is_link(part, current):
                    raise ValueError(f"{shown} is a symbolic link; links are refused.") from exc
                raise ValueError(f"{shown} cannot be opened ({exc.strerror}).") from exc
            os.close(current)
            current = opened
    except BaseException:
        os.close(current)
        raise
    return current


def _is_link(name: str, folder: int) -> bool:
    """Whether ``name`` in ``folder`` is a link: one opened as a folder with O_NOFOLLOW fails as "not a folder"."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def open_unlinked(path: str | Path, *, beneath: int | None = None) -> Iterator[int]:
    """A descriptor of ``path`` with no symbolic link followed at any part of it: an absolute path opened from
    "/", a relative one beneath the folder open as ``beneath``. A link or a missing part is a ValueError
    naming it."""
    fd = _open(path, beneath)
    try:
        yield fd
    finally:
        os.close(fd)


def open_file_beneath(top: int, relative: str) -> BinaryIO:
    """The regular file ``relative`` to the folder open as ``top``, opened with no link followed below it."""
    fd = _open(relative, top)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{relative} is not a regular file; only regular files are stored.")
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def open_folder(folder: Path) -> Iterator[int]:
    """``folder``, whose files are about to be read (``open_file_beneath``), opened. One under an import root is
    the engineers': opened from "/" with no link followed, as ``resolve_import_path`` requires of its path. Any
    other is the platform's own (a work folder, an extracted archive, a conversion), whose data dir may lie
    behind a link: opened through its path, and only what lies below it is opened with no link followed."""
    if any(folder == root or root in folder.parents for root in settings.IMPORT_ROOTS):
        with open_unlinked(folder) as fd:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise ValueError(f"{folder} is not a folder.")
            yield fd
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


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

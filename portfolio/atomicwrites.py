"""Files written whole or not at all: under a temporary name in the same folder, then linked or renamed into
place, so no reader (and no crash, no full disk) ever leaves half a file under the real name.

- ``create_once``: secrets made once per installation and kept in the data folder (the development secret
  key, the audit signing key), written by whichever process starts first and read by every other.
- ``replace``: a file written again whole (the admin's password, an exported statement).

This module imports nothing of Django's: settings and the offline audit verifier import it as it is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def create_once(path: Path, content: bytes) -> bytes:
    """``content`` written to ``path``, readable by its owner only, unless the file is already there: what
    ``path`` holds afterwards is returned, so processes starting together (web, worker, beat) all use the
    first one's. It is written under a temporary name and then linked into place, so nobody reads half a
    file and a crash leaves no empty one behind; an empty file (left by a crash of an older version) is
    replaced."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)  # left by a process of the same pid that died mid-write
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    try:
        os.link(temporary, path)
    except FileExistsError:  # another process of this installation was first: use its content
        if existing := path.read_bytes():
            return existing
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return content


def current_umask() -> int:
    """The process's umask, read without setting it: ``os.umask`` can only be read by changing it, and for
    that moment every other thread's new files would get the temporary mask. Linux has it in
    /proc/self/status; elsewhere it is swapped with the strictest mask, so another thread's file is at worst
    private for that moment, never open to all."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def replace(path: Path, data: bytes, *, private: bool = False) -> None:
    """``data`` in ``path``, replacing what was there: written and synced under a temporary name in the same
    folder, then renamed over it. ``private``: readable by its owner only (whatever mode an older file had);
    else the mode a new file gets under the umask."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if not private:  # mkstemp's 0600 otherwise
            os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

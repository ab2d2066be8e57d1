"""Where the processes of `portfolio run` write: one log file each under ``<data>/logs/`` (the previous run's
kept as ``<name>.log.1``), so the terminal shows only the start-up and the events a person waits for.
With ``--verbose`` (or ``PORTFOLIO_VERBOSE=1``) the launcher also follows every file live, each line
prefixed with its process's name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, TextIO


def open_log(folder: Path, name: str) -> IO[bytes]:
    """A fresh ``<name>.log`` for this run, the last run's moved to ``<name>.log.1``; unbuffered, so that a
    child process writing to it and a reader following it see each line at once."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.log"
    if path.exists():
        path.replace(folder / f"{name}.log.1")
    return open(path, "ab", buffering=0)  # noqa: SIM115 - handed to a child process, closed by the caller


class Follower:
    """Follows log files as they grow and writes their new complete lines to ``out``, prefixed."""

    def __init__(self, out: TextIO) -> None:
        self.out: TextIO | None = out
        self._files: dict[str, tuple[IO[bytes], bytearray]] = {}

    def follow(self, name: str, path: Path) -> None:
        self._files[name] = (open(path, "rb"), bytearray())  # noqa: SIM115 - closed in close()

    def pump(self) -> None:
        """Writes the lines the files gained. A terminal gone (EIO once SIGHUP came: the SSH session lost) ends
        the following, not the run: the launcher still has to stop what it started, and the lines are in the
        log files."""
        if self.out is None:
            return
        width = max((len(name) for name in self._files), default=0)
        try:
            for name, (handle, pending) in self._files.items():
                pending += handle.read()
                *lines, rest = pending.split(b"\n")
                for line in lines:
                    self.out.write(f"{name:<{width}} | {line.decode(errors='replace').rstrip()}\n")
                pending[:] = rest
            self.out.flush()
        except OSError:
            self.out = None

    def close(self) -> None:
        try:
            self.pump()
        finally:
            for handle, _ in self._files.values():
                handle.close()
            self._files.clear()


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for a failure message."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 64 * 1024))
            return b"\n".join(handle.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""

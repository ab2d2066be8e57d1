"""Anchors: chain heads (sequence and hash) recorded outside the database, and how they are read.

An anchor is the periodic log line of ``tasks.anchor_head``, or an export's manifest (its head_sequence and
head_hash). The chain's own links only show that each event follows the one before; someone able to rewrite
the table could rehash everything after an edit. An anchor taken before the rewrite no longer matches, which
is how such a rewrite is detected later: against the database (``verification.anchor_problems``) or against
an export, offline (``offline.verify_export``).

No Django here: the offline verifier reads anchors on a machine with no settings and no database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# What tasks.anchor_head logs, and what the verifiers look for in a log file: one format, so they cannot drift.
LOG_FORMAT = "audit-anchor sequence=%(sequence)d hash=%(hash)s at=%(at)s"
ANCHOR_LINE = re.compile(r"audit-anchor sequence=(\d+) hash=([0-9a-f]{64})")


@dataclass(frozen=True)
class Anchor:
    sequence: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``SEQUENCE:HASH`` as an operator types it."""
        sequence, _, digest = text.strip().partition(":")
        if not sequence.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{text!r} is not SEQUENCE:HASH (a number, a colon, 64 hex digits)")
        return cls(int(sequence), digest)


def anchors_in(lines: Iterable[str]) -> list[Anchor]:
    """Every anchor logged by ``tasks.anchor_head`` in a log file."""
    return [Anchor(int(m.group(1)), m.group(2)) for line in lines for m in ANCHOR_LINE.finditer(line)]


def from_options(texts: Iterable[str], log: Path | None) -> list[Anchor]:
    """The anchors a command line gives (``--anchor`` texts, a ``--anchors-from`` log file); the ValueError
    names the option at fault, for the commands to show as it is."""
    try:
        anchors = [Anchor.parse(text) for text in texts]
    except ValueError as exc:
        raise ValueError(f"--anchor: {exc}") from exc
    if log is not None:
        try:
            with log.open(errors="replace") as lines:
                anchors += anchors_in(lines)
        except OSError as exc:  # missing, a folder, unreadable
            raise ValueError(f"--anchors-from: cannot read {log}: {exc.strerror or exc}.") from exc
    return anchors

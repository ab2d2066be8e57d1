"""Verifying the stored chain from the database, streaming in sequence order, and against anchors.

An anchor is a chain head (sequence and hash) recorded outside the database: the periodic log line of
``tasks.anchor_head``, or an export's manifest. The chain's own links only show that each event follows the
one before; someone able to rewrite the table could rehash everything after an edit. An anchor taken
before the rewrite no longer matches, which is how such a rewrite is detected later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from portfolio.audit import chain
from portfolio.audit.models import AuditEvent

ANCHOR_LINE = re.compile(r"audit-anchor sequence=(\d+) hash=([0-9a-f]{64})")


def _rows() -> Iterator[dict]:
    for event in AuditEvent.objects.order_by("sequence").iterator(chunk_size=5000):
        row = chain.fields_of(event)
        row["hash"] = event.hash
        yield row


def verify_database() -> chain.Verdict:
    rows = _rows()
    first = next(rows, None)
    if first is None:
        return chain.Verdict(True, 0)
    if first["sequence"] != 1:
        return chain.Verdict(False, 0, 1, "the chain does not start at sequence 1: events missing")

    def with_first() -> Iterator[dict]:
        yield first
        yield from rows

    return chain.verify(with_first(), contiguous=True, start_prev_hash=chain.GENESIS_HASH)


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


def anchor_problems(anchors: Iterable[Anchor]) -> list[str]:
    """What the stored chain says against each anchor (run with ``verify_database``, which checks the links:
    together they prove every event up to an anchor is the one that stood when the anchor was taken)."""
    problems = []
    for anchor in anchors:
        if anchor.sequence == 0:
            continue  # the chain was empty when this anchor was taken
        stored = AuditEvent.objects.filter(sequence=anchor.sequence).values_list("hash", flat=True).first()
        if stored is None:
            problems.append(f"anchor at sequence {anchor.sequence}: the event is missing from the chain")
        elif stored != anchor.hash:
            problems.append(
                f"anchor at sequence {anchor.sequence}: the stored event's hash differs from the anchored one, "
                "the history up to it was rewritten"
            )
    return problems

"""Verifying the stored chain from the database, streaming in sequence order, and against anchors.

An anchor (``anchors``) is a chain head recorded outside the database; the history up to it must still be
the one that stood when it was taken.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import cast

from django.db import transaction

from portfolio.audit import chain
from portfolio.audit.anchors import Anchor
from portfolio.audit.models import AuditEvent


def _rows() -> Generator[dict, None, None]:
    events = cast(
        Generator[AuditEvent, None, None], AuditEvent.objects.order_by("sequence").iterator(chunk_size=5000)
    )
    try:
        for event in events:
            row = chain.fields_of(event)
            row["hash"] = event.hash
            yield row
    finally:
        events.close()  # its server-side cursor, closed inside the transaction even when the walk stops early


def verify_database() -> chain.Verdict:
    # The transaction is what a server-side cursor needs: outside one (``audit_verify`` runs in autocommit)
    # Django declares it WITH HOLD, and PostgreSQL copies the whole trail before the first row is checked.
    # It takes no lock that writers wait for, and the cursor reads one snapshot of the trail.
    with transaction.atomic():
        rows = _rows()
        try:
            return _walk(rows)
        finally:
            rows.close()


def _walk(rows: Iterator[dict]) -> chain.Verdict:
    first = next(rows, None)
    if first is None:
        return chain.Verdict(True, 0)
    if first["sequence"] != 1:
        return chain.Verdict(False, 0, 1, "the chain does not start at sequence 1: events missing")

    def with_first() -> Iterator[dict]:
        yield first
        yield from rows

    return chain.verify(with_first(), contiguous=True, start_prev_hash=chain.GENESIS_HASH)


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

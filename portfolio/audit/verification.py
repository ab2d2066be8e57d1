"""Verifying the stored chain from the database, streaming in sequence order."""

from __future__ import annotations

from collections.abc import Iterator

from portfolio.audit import chain
from portfolio.audit.models import AuditEvent


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

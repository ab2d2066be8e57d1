"""The price book in force: which version prices a subject at a time, and where price changes split a
span of compute. Read once per computation (a statement, the gateway's routing table), never per event."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price

# A statement written (closed or re-issued) holds it shared, a new price version exclusively: a version
# that starts inside a month cannot commit while that month's statement is written (the check of closed
# months would not see it yet), nor appear between a statement's price book and its token rows.
PRICE_BOOK_LOCK_ID = 0x5052494345  # "PRICE"


def priced(price: Price | None) -> bool:
    """Whether calls are charged at ``price`` (an endpoint's version in force): an endpoint with a version of
    no rate at all is charged as one with none, other teams' calls at a share of its compute (charges.py)."""
    return price is not None and bool(
        price.input_per_million or price.output_per_million or price.audio_second
    )


def hold_price_book(*, exclusive: bool) -> None:
    """Take the price book's transaction lock (see PRICE_BOOK_LOCK_ID); it ends with the transaction."""
    from django.db import connection

    with connection.cursor() as cursor:
        call = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        cursor.execute(f"SELECT {call}(%s)", [PRICE_BOOK_LOCK_ID])  # noqa: S608 - one of two names


class PriceBook:
    """Every version of the prices it was given, by subject, in time order."""

    def __init__(self, prices: Iterable[Price]):
        self._versions: dict[tuple[str, str], list[Price]] = {}
        self._by_id: dict[int, Price] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            self._by_id[price.pk] = price
            self._versions.setdefault((price.kind, price.subject_id), []).append(price)
        self._starts = {key: [p.effective_from for p in versions] for key, versions in self._versions.items()}

    @classmethod
    def load(cls, *, kinds: Iterable[str] | None = None, until: datetime | None = None) -> PriceBook:
        """The versions of ``kinds`` (all when None) that start before ``until`` (all when None)."""
        prices = Price.objects.all()
        if kinds is not None:
            prices = prices.filter(kind__in=list(kinds))
        if until is not None:
            prices = prices.filter(effective_from__lt=until)
        return cls(prices)

    def subjects(self, kind: str) -> list[str]:
        return [subject for k, subject in self._versions if k == kind]

    def version(self, price_id: int | None) -> Price | None:
        return self._by_id.get(price_id) if price_id is not None else None

    def starts(self, kind: str, start: datetime, end: datetime) -> list[tuple[str, datetime]]:
        """(subject id, start) of each version of ``kind`` that starts in ``[start, end)``."""
        return [
            (subject, when)
            for (k, subject), starts in self._starts.items()
            if k == kind
            for when in starts
            if start <= when < end
        ]

    def at(self, kind: str, subject_id, when: datetime) -> Price | None:
        """The version in force at ``when``: the latest that starts at or before it."""
        key = (kind, str(subject_id))
        starts = self._starts.get(key)
        if not starts:
            return None
        index = bisect.bisect_right(starts, when) - 1
        return self._versions[key][index] if index >= 0 else None

    def spans(
        self, kind: str, subject_id, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime, Price | None]]:
        """``[start, end)`` cut where a version starts, each piece with the version in force over it."""
        key = (kind, str(subject_id))
        cuts = [t for t in self._starts.get(key, []) if start < t < end]
        bounds = [start, *cuts, end]
        return [
            (a, b, self.at(kind, subject_id, a)) for a, b in zip(bounds, bounds[1:], strict=False) if a < b
        ]


def current_token_rates(now: datetime | None = None) -> dict[int, tuple[Decimal, Decimal]]:
    """For the gateway's routing table: each priced endpoint's (input, output) price per million tokens now."""
    book = PriceBook.load(kinds=[PriceKind.ENDPOINT], until=None)
    now = now or timezone.now()
    rates = {}
    for subject_id in book.subjects(PriceKind.ENDPOINT):
        price = book.at(PriceKind.ENDPOINT, subject_id, now)
        if price is not None and subject_id.isdigit():
            rates[int(subject_id)] = (price.input_per_million, price.output_per_million)
    return rates


def current_audio_rates(now: datetime | None = None) -> dict[int, Decimal]:
    """For the gateway's routing table: each endpoint's price per second of audio now (those priced)."""
    book = PriceBook.load(kinds=[PriceKind.ENDPOINT], until=None)
    now = now or timezone.now()
    rates = {}
    for subject_id in book.subjects(PriceKind.ENDPOINT):
        price = book.at(PriceKind.ENDPOINT, subject_id, now)
        if price is not None and subject_id.isdigit() and price.audio_second:
            rates[int(subject_id)] = price.audio_second
    return rates

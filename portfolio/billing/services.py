"""Changes to the price book and to statements, each with its audit row in the same transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.audit.choices import AuditAction
from portfolio.billing import money, pricing, subjects
from portfolio.billing.choices import PriceKind, StatementStatus
from portfolio.billing.models import Price, Statement
from portfolio.billing.subjects import Subject
from portfolio.errors import Invalid

MAX_RATE = Decimal("1000000000")  # per unit: a typo of a few orders of magnitude, not a real price


def _rate(name: str, value) -> Decimal:
    try:
        rate = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise Invalid(f"{name}: {value!r} is not a number.") from None
    if not rate.is_finite() or rate < 0 or rate > MAX_RATE:
        raise Invalid(f"{name}: use a number from 0 to {MAX_RATE}.")
    if rate != rate.quantize(Decimal("0.000001")):
        raise Invalid(f"{name}: use at most 6 decimal places.")
    return rate.quantize(Decimal("0.000001"))  # as stored, so the audit row says what the table holds


def next_hour(now: datetime) -> datetime:
    """The first hour boundary (UTC) after ``now``: where a price set now takes effect by default."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


@transaction.atomic
def set_price(
    *,
    actor: Actor,
    subject: Subject,
    effective_from: datetime | None = None,
    note: str = "",
    **rates,
) -> Price:
    """A new version of ``subject``'s prices from ``effective_from`` (default: the start of the next hour).

    Versions start on the hour and never inside a month already closed for any department; rates not
    given keep the value of the version in force then. The default is never in the past: calls of this
    hour were admitted and budgeted at the price in force, and keep it. An earlier hour of an open month
    may still be given explicitly (a correction: it re-prices what was used since).
    """
    gate.require(actor, "price.manage")
    if refused := subjects.refusal(subject):
        raise Invalid(f"subject: {refused}")
    allowed = Price.RATE_FIELDS[PriceKind(subject.kind)]
    unknown = set(rates) - set(allowed)
    if unknown:
        raise Invalid(f"A {subject.kind} price has {', '.join(allowed)}; not {', '.join(sorted(unknown))}.")
    now = timezone.now()
    effective_from = effective_from or next_hour(now)
    if timezone.is_naive(effective_from):
        raise Invalid("effective_from needs a time zone.")
    # On the hour in UTC, where the hourly token ledger is cut (10:00+05:30 is 04:30 UTC, inside an hour).
    try:
        effective_from = effective_from.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in the year 10000 in UTC
        raise Invalid("effective_from is out of range.") from None
    if effective_from != effective_from.replace(minute=0, second=0, microsecond=0):
        raise Invalid("Prices change on the hour (UTC): use a time with no minutes or seconds in UTC.")
    pricing.hold_price_book(exclusive=True)  # a month's statement being written is seen as closed here
    if Statement.objects.filter(month__gte=money.month_start(effective_from.astimezone(UTC))).exists():
        raise Invalid(
            f"The month of {effective_from:%Y-%m-%d} is already closed: a price may only change from a "
            "month that is still open (re-issue a closed statement to correct it)."
        )
    if effective_from > now + timedelta(days=366):
        raise Invalid("effective_from is more than a year ahead.")
    if len(note) > 200:
        raise Invalid("note: at most 200 characters.")
    previous = (
        Price.objects.filter(kind=subject.kind, subject_id=subject.id, effective_from__lte=effective_from)
        .order_by("-effective_from")
        .first()
    )
    values = {name: (getattr(previous, name) if previous else Decimal("0")) for name in allowed}
    values.update({name: _rate(name, value) for name, value in rates.items()})
    if previous is not None and previous.effective_from == effective_from:
        raise Invalid(f"A version from {effective_from:%Y-%m-%d %H:%M} exists; use a later time.")
    price = Price.objects.create(
        kind=subject.kind,
        subject_id=subject.id,
        subject_name=subject.name,
        effective_from=effective_from,
        note=note,
        created_by=actor.user,
        **values,
    )
    audit.record(
        actor,
        AuditAction.PRICE_SET,
        price,
        before=previous.snapshot() if previous else None,
        after=price.snapshot(),
    )
    return price


def closed(department_id: int, month) -> Statement | None:
    return Statement.objects.filter(
        department_id=department_id, month=month, status=StatementStatus.CLOSED
    ).first()

"""Money arithmetic: exact until a line is made, rounded once per line, half away from zero, to the cent.

Quantities of time and bytes are fractions (seconds / 3600, bytes / 2**30) that no decimal holds exactly,
so a line's amount is summed as a ``Fraction`` of every event and interval it covers, priced one by one,
and only the sum is rounded. A statement's total is the sum of its rounded lines.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

from portfolio.errors import Invalid

CENT = Decimal("0.01")
QUANTITY = Decimal("0.000000001")
GIB = 2**30
MILLION = 1_000_000
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])\Z")


def to_decimal(value: Fraction, places: Decimal) -> Decimal:
    with localcontext() as context:
        context.prec = 60
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        return exact.quantize(places, rounding=ROUND_HALF_UP)


def seconds(milliseconds: int | None) -> Decimal:
    """Milliseconds (as the meters count audio) as seconds, exactly."""
    return Decimal(milliseconds or 0).scaleb(-3)


def cents(value: Fraction) -> Decimal:
    """The amount of a line: its exact sum rounded once, to the cent, half away from zero."""
    return to_decimal(value, CENT)


def quantity(value: Fraction) -> Decimal:
    return to_decimal(value, QUANTITY)


def month_start(when: date | datetime) -> date:
    return date(when.year, when.month, 1)


def next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """The month as ``[start, end)`` in UTC (statements follow UTC calendar months)."""
    end = next_month(month)
    return (
        datetime(month.year, month.month, 1, tzinfo=UTC),
        datetime(end.year, end.month, 1, tzinfo=UTC),
    )


def days_in(month: date) -> int:
    return (next_month(month) - month).days


def parse_month(text: str | None, now: datetime) -> date:
    """``YYYY-MM`` (default: this month) as its first day; a month not begun yet is refused."""
    if text is None or text == "":
        return month_start(now)
    found = MONTH.match(text)
    if found is None or not 2000 <= int(found.group(1)) <= 2999:
        raise Invalid(
            f"month: {text[:20]!r} is not a month: use YYYY-MM (2000-01 to 2999-12).",
            fields={"month": ["Use YYYY-MM."]},
        )
    month = date(int(found.group(1)), int(found.group(2)), 1)
    if month > month_start(now):
        raise Invalid(f"month: {text} has not begun.", fields={"month": ["Not begun."]})
    return month

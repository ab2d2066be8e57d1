"""Usage events live in monthly partitions of ``gateway_usageevent`` (PostgreSQL range partitioning on
``at``), so that a month of raw events can be dropped whole once its retention has passed, while the
hourly rollups, billing's ledger and closed statements, which are separate tables, outlive it.

- ``ensure(now, ahead)`` creates the partitions of the previous and current month and of ``ahead`` months
  after it. Creating a partition takes the table's owner, which the application role is not (dbroles.py),
  so ``portfolio migrate`` runs it with a year ahead at every deploy; the daily beat task runs it too, which
  works where the application owns its tables (the embedded default) and otherwise logs that a deploy is
  due. An event outside every monthly partition (a clock far off, a year without a deploy) lands in the
  default partition: nothing is lost, and when its month's partition is created its rows move there.
  ``ensure`` first gives every month that has rows in the default partition its own partition: migration
  0004 copied an upgraded install's whole history there, and rows left in it would never be dropped.
- ``drop_expired(now)`` drops the partitions of months that ended more than
  ``PORTFOLIO_USAGE_RETENTION_MONTHS`` ago (default 13: a year and the month before it). Each drop is
  audited (``usage.drop_month``: the month, the rows dropped, the retention) in the drop's transaction.
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime

from django.conf import settings
from django.db import connection, transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit

logger = logging.getLogger(__name__)
TABLE = "gateway_usageevent"
DEFAULT = f"{TABLE}_default"
NAME = re.compile(rf"^{TABLE}_y(\d{{4}})m(\d{{2}})$")


def _month(year: int, month: int) -> date:
    year += (month - 1) // 12
    return date(year, (month - 1) % 12 + 1, 1)


def _name(month: date) -> str:
    return f"{TABLE}_y{month.year:04d}m{month.month:02d}"


def partitions() -> dict[str, date]:
    """The monthly partitions that exist, by name."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [TABLE],
        )
        names = [row[0] for row in cursor.fetchall()]
    found = {}
    for name in names:
        match = NAME.match(name)
        if match:
            found[name] = date(int(match[1]), int(match[2]), 1)
    return found


@transaction.atomic
def create(month: date) -> bool:
    """The partition of ``month`` (first day), moving any of its rows out of the default partition."""
    name, start, end = _name(month), month, _month(month.year, month.month + 1)
    if name in partitions():
        return False
    with connection.cursor() as cursor:
        # Locks the parent: no event of the month can reach the default partition meanwhile.
        cursor.execute(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE at >= %s AND at < %s RETURNING *) "  # noqa: S608 - our names
            f"INSERT INTO {name} SELECT * FROM moved",
            [start, end],
        )
        cursor.execute(
            f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [start, end]
        )
    return True


def adopt_default() -> list[str]:
    """A partition for every month that has rows in the default partition, which moves them into it; returns
    those it created. Once done, ``drop_expired`` drops the months past retention among them, as it drops
    any other: rows left in the default partition would outlive every retention.

    The first run after an upgrade moves the history migration 0004 copied into the default partition, one
    month per transaction where the caller holds none (`portfolio migrate`, the daily task): each holds off
    inserts (the flusher's batches wait in the stream) only while its own month's rows move. Later runs find
    the default partition empty but for a stray event or two, so its scan costs little."""
    with connection.cursor() as cursor:
        # In UTC, as the partitions' bounds are (Django's connection works in UTC). The table name is ours.
        cursor.execute(
            f"SELECT DISTINCT date_trunc('month', at AT TIME ZONE 'UTC') FROM {DEFAULT}"  # noqa: S608
        )
        months = sorted(row[0].date() for row in cursor.fetchall())
    return [_name(month) for month in months if create(month)]


def ensure(now: datetime | None = None, ahead: int = 2) -> list[str]:
    """Partitions for the months that have rows in the default partition (``adopt_default``) and for the
    previous, current and ``ahead`` next months; returns those it created."""
    from django.utils import timezone

    now = now or timezone.now()
    made = adopt_default()
    for offset in range(-1, ahead + 1):
        month = _month(now.year, now.month + offset)
        if create(month):
            made.append(_name(month))
    return made


def kept_from(now: datetime) -> date:
    """The first month whose raw events are kept: the partitions of earlier ones are dropped."""
    return _month(now.year, now.month - settings.USAGE_RETENTION_MONTHS)


def drop_expired(now: datetime | None = None) -> list[str]:
    """Drop the partitions of months that ended more than the retention ago; returns their names."""
    from django.utils import timezone

    now = now or timezone.now()
    keep_from = kept_from(now)
    dropped = []
    for name, month in sorted(partitions().items(), key=lambda item: item[1]):
        if month < keep_from:
            rows = _drop(name, month)
            logger.info(
                "usage: dropped the %s raw events of %s (retention %s months)",
                rows,
                month,
                settings.USAGE_RETENTION_MONTHS,
            )
            dropped.append(name)
    return dropped


@transaction.atomic
def _drop(name: str, month: date) -> int:
    """Detach, count, drop and audit one month's partition, all or nothing: a failed drop (the application
    role does not own the table) leaves the rows and no audit row. Returns the rows dropped."""
    with connection.cursor() as cursor:
        # A plain DETACH (not CONCURRENTLY, which refuses a transaction block) locks the partition: no event
        # reaches it between the count and the drop, so the count is what was dropped.
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
        cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 - our names
        rows = cursor.fetchone()[0]
        cursor.execute(f"DROP TABLE {name}")
    audit.record(
        Actor.for_system("gateway.usage_retention"),
        "usage.drop_month",
        object_type="gateway.usageevent",
        object_id=name,
        object_repr=f"usage events of {month:%Y-%m}",
        after={"month": f"{month:%Y-%m}", "rows": rows, "retention_months": settings.USAGE_RETENTION_MONTHS},
    )
    return rows

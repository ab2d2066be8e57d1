"""How the apps above billing write what they metered into its ledger (billing imports none of them).

- The gateway's usage rollup hands over whole hours of token usage (``replace_token_hours``): a late event
  recomputes its hour, and the ledger row becomes the new sum; nothing is added twice.
- Serving opens an interval when a replica starts and closes it when it stops or crashes; training
  records a job's run (``open_interval`` / ``close_interval`` / ``record_interval``), each idempotent
  under its key.
- The registry writes each team's stored bytes once a day (``record_storage_day``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction

from portfolio.billing.models import ComputeInterval, StorageDay, TokenUsage


@dataclass(frozen=True)
class TokenHour:
    """One ledger row of token usage, as the usage rollup sums it."""

    hour: datetime
    endpoint_id: int | None
    endpoint: str
    owner_team_id: int | None
    owner_department_id: int | None
    deployment: str
    team_id: int | None
    department_id: int | None
    requests: int
    input_tokens: int
    output_tokens: int
    audio_ms: int = 0  # speech models' audio, priced per second


@transaction.atomic
def replace_token_hours(start: datetime, end: datetime, rows: Iterable[TokenHour]) -> int:
    """Make the ledger's rows of the hours in ``[start, end)`` exactly ``rows`` (the rollup's sums). One caller
    at a time (the usage rollup holds its lock): a second one's DELETE cannot see the first's new rows."""
    TokenUsage.objects.filter(hour__gte=start, hour__lt=end).delete()
    made = TokenUsage.objects.bulk_create(
        [TokenUsage(**row.__dict__) for row in rows if start <= row.hour < end], batch_size=2000
    )
    _rewrite_days(start, end)
    return len(made)


def _midnight(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


DAYS_FROM_HOURS = """
INSERT INTO billing_tokenday (day, endpoint_id, endpoint, owner_team_id, owner_department_id, deployment,
    team_id, department_id, requests, input_tokens, output_tokens, audio_ms)
SELECT date_trunc('day', hour, 'UTC'), endpoint_id, endpoint, owner_team_id, owner_department_id, deployment,
    team_id, department_id, sum(requests), sum(input_tokens), sum(output_tokens), sum(audio_ms)
FROM billing_tokenusage WHERE hour >= %s AND hour < %s
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


def _rewrite_days(start: datetime, end: datetime) -> None:
    """The day ledger's rows of every day that ``[start, end)`` touches, summed again from its hours."""
    first, last = _midnight(start), _midnight(end - timedelta(microseconds=1)) + timedelta(days=1)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM billing_tokenday WHERE day >= %s AND day < %s", [first, last])
        cursor.execute(DAYS_FROM_HOURS, [first, last])


def open_interval(
    *,
    key: str,
    kind: str,
    team_id: int,
    department_id: int,
    subject: str,
    pool_id: int,
    pool: str,
    gpus: Decimal | int,
    cpu_cores: int,
    memory_bytes: int,
    started_at: datetime,
) -> ComputeInterval:
    """Start metering compute under ``key``; a second call for the same key changes nothing."""
    interval, _ = ComputeInterval.objects.get_or_create(
        key=key,
        defaults={
            "kind": kind,
            "team_id": team_id,
            "department_id": department_id,
            "subject": subject,
            "pool_id": pool_id,
            "pool": pool,
            "gpus": gpus,
            "cpu_cores": cpu_cores,
            "memory_bytes": memory_bytes,
            "started_at": started_at,
        },
    )
    return interval


def close_interval(key: str, ended_at: datetime) -> bool:
    """Stop metering ``key`` at ``ended_at`` (never before it started); False if it was not open."""
    interval = ComputeInterval.objects.filter(key=key, ended_at__isnull=True).first()
    if interval is None:
        return False
    return bool(
        ComputeInterval.objects.filter(pk=interval.pk, ended_at__isnull=True).update(
            ended_at=max(ended_at, interval.started_at)
        )
    )


def record_interval(*, ended_at: datetime, **fields) -> ComputeInterval:
    """A finished run at once (a job's attempt): open and close under one key, idempotently."""
    with transaction.atomic():
        interval = open_interval(**fields)
        close_interval(interval.key, ended_at)
    interval.refresh_from_db()
    return interval


def open_keys(kind: str) -> set[str]:
    """Keys of the intervals of ``kind`` still open (the replica meter closes those whose replica is gone)."""
    return set(ComputeInterval.objects.filter(kind=kind, ended_at__isnull=True).values_list("key", flat=True))


def record_storage_day(day: date, usage: Iterable[tuple[int, int, str, int]]) -> int:
    """Set the stored bytes of ``day``: (team id, department id, store, bytes) each; rerunning replaces."""
    rows = [StorageDay(day=day, team_id=t, department_id=d, store=s, bytes=b) for t, d, s, b in usage]
    with transaction.atomic():
        StorageDay.objects.filter(day=day).delete()
        StorageDay.objects.bulk_create(rows)
    return len(rows)

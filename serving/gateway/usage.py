"""Usage events: from the gateway's Redis stream into PostgreSQL in batches, then hourly rollups.

The flusher reads through a consumer group and acknowledges only after the batch is committed; entries a
killed flusher left unacknowledged are claimed again by the next run, and inserts ignore event ids that
are already stored, so nothing is lost and nothing is counted twice.

Rollups catch up on whatever arrives late (events that sat in the stream through a worker outage, or were
claimed again after one): after each commit, and before acknowledging, the flusher marks the hours its
batch touched in a Redis hash (hour -> a counter it bumps), and the rollup recomputes exactly those hours,
plus the previous and the current one. A marked hour is cleared only if its counter is still the one the
rollup read, so an hour marked again while its rollup ran stays marked for the next run.

Each recomputed span of hours is also handed to billing's ledger in the same transaction
(``billing.meters.replace_token_hours``): the ledger's rows of those hours become the new sums per hour,
endpoint, deployment and calling team, so a late event changes its hour's row and nothing is counted twice.

One rollup at a time: each deletes and inserts the ledger's rows again, and two at once would leave a day's
rows twice (or fail on an hour's). A rollup's transaction starts by taking an advisory lock; the periodic
rollup skips its run if another holds it (its marks stay, and the next run a minute later does the hours),
a rollup ``since`` a time waits for it.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import cast

import orjson
from django.db import connection, models, transaction
from django.db.models import Max

from portfolio.billing import meters
from serving.gateway import hop_ids, inflight, keystate, partitions
from serving.gateway.events import USAGE_STREAM
from serving.gateway.models import ApiKey, UsageEvent

logger = logging.getLogger(__name__)
GROUP = "flusher"
DEAD_LETTERS = f"{USAGE_STREAM}:unreadable"
CLAIM_IDLE_MS = 30_000
# Redis runs every gateway's admission and settlement on its one thread, so no call here may hold it long:
# one read of 2,000 events held it about 5 ms (SLOWLOG), a wait for every gateway request that came in
# meanwhile. The flusher reads, acknowledges and deletes in chunks of this many (about 0.2 ms each) and
# still inserts its whole batch into PostgreSQL at once.
REDIS_CHUNK = 200
DIRTY_HOURS = "portfolio:gw:usage:dirty-hours"  # hash: hour (epoch seconds) -> times marked
MAX_HOURS_PER_ROLLUP = 24 * 7  # the oldest marked hours first; a longer backlog takes a few runs
_CLEAR_UNCHANGED = """
for i = 1, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
"""


def _ensure_group(client) -> None:
    import redis

    try:
        client.xgroup_create(USAGE_STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _event(fields: dict) -> dict:
    """A stream entry (one field ``e``: the event as JSON, see events.usage_event) as a row to insert, by
    column; numbers are checked here, so a malformed entry is set aside alone, not with its whole batch."""
    e = orjson.loads(fields[b"e"])
    row = {
        "event_id": str(e["id"]),
        "at": datetime.fromtimestamp(float(e["at"]), UTC),
        "api_key_id": _id(e["key"]),
        "team_id": _id(e["team"]),
        "department_id": _id(e["department"]),
        "endpoint": str(e["endpoint"]),
        "via": str(e.get("via") or ""),  # absent from events of gateways older than composite endpoints
        # Absent from events of gateways older than billing's ledger.
        "endpoint_id": _id(e.get("endpoint_id")),
        "owner_team_id": _id(e.get("owner_team")),
        "owner_department_id": _id(e.get("owner_department")),
        "deployment": str(e["deployment"]),
        "adapter": str(e["adapter"]),
        "model_version_id": _id(e["version"]),
        "replica_id": _id(e["replica"]),
        "kind": str(e["kind"]),
        "stream": bool(e["stream"]),
        "input_tokens": int(e["in"]),
        "output_tokens": int(e["out"]),
        "audio_ms": int(e.get("audio_ms") or 0),  # absent from events of gateways older than audio routes
        "latency_ms": int(e["latency_ms"]),
        "ttft_ms": None if e["ttft_ms"] is None else int(e["ttft_ms"]),
        "status": int(e["status"]),
        "error": str(e["error"]),
        "cost": Decimal(int(e["cost_micros"])) / Decimal(1_000_000),
    }
    return _fitting(row)


def _id(value) -> int | None:
    return int(value) if value else None


def _fitting(row: dict) -> dict:
    """``row``, if every value fits its column: COPY refuses the whole batch for one that does not (a number
    past an integer column, say), which would then be claimed again and refused for ever."""
    for column, low, high in _ranges():
        value = row[column]
        if value is not None and not low <= value <= high:
            raise ValueError(f"{column}: {value} is outside its column's range, {low} to {high}")
    return row


@cache
def _ranges() -> list[tuple[str, int | Decimal, int | Decimal]]:
    """(column, least, most) of each number column of the events table, as the model declares them."""
    ranges: list[tuple[str, int | Decimal, int | Decimal]] = []
    for f in UsageEvent._meta.concrete_fields:
        column, target = f.column, getattr(f, "target_field", f)  # a key's id: as the key's primary key
        if not column or f.primary_key:
            continue
        if isinstance(target, models.DecimalField):
            most = (
                Decimal(10) ** (target.max_digits - target.decimal_places)
                - Decimal(10) ** -target.decimal_places
            )
            ranges.append((column, -most, most))
        elif isinstance(target, models.IntegerField):
            ranges.append((column, *connection.ops.integer_field_range(target.get_internal_type())))
    return ranges


INCOMING = "usage_incoming"  # a temporary table of the session: a batch, copied in, before it is inserted


def _insert(events: list[dict]) -> None:
    """A batch into the events table, skipping events already stored (a redelivery): copied into a temporary
    table (COPY: rows written by psycopg's C code) and inserted from there, as COPY itself cannot skip
    conflicts. Django's cursor binds parameters in Python, about 30 µs an event for a batch passed as
    arrays, and model instances for ``bulk_create`` cost more still (benchmarks/README.md)."""
    table = UsageEvent._meta.db_table
    # _event gives each of them.
    columns = [f.column for f in UsageEvent._meta.concrete_fields if f.column and not f.primary_key]
    names = ", ".join(columns)
    with connection.cursor() as cursor:
        # The names are the model's own; the values go by COPY.
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING} ON COMMIT DELETE ROWS AS "  # noqa: S608
            f"SELECT {names} FROM {table} WITH NO DATA"
        )
        cursor.execute(f"DELETE FROM {INCOMING}")  # noqa: S608 - (inside a caller's transaction: left rows)
        with cursor.cursor.copy(f"COPY {INCOMING} ({names}) FROM STDIN") as copy:
            for event in events:
                copy.write_row([event[column] for column in columns])
        cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {INCOMING} ON CONFLICT DO NOTHING"  # noqa: S608
        )


def flush(batch: int = 2000, consumer: str | None = None) -> int:
    """Move up to ``batch`` events (first any left pending by a dead flusher) into PostgreSQL."""
    client = keystate.client()
    _ensure_group(client)
    entries = [(entry_id, fields) for entry_id, fields in _read(client, consumer, batch) if fields]
    if not entries:
        return 0
    events = []
    for entry_id, fields in entries:
        try:
            events.append(_event(fields))
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            # One unreadable entry (or one past its columns) must not hold up every later one: set it aside,
            # whole, for a person to see.
            logger.error(
                "usage: stream entry %s is not a usage event that can be stored (%r); moved to %s",
                entry_id,
                exc,
                DEAD_LETTERS,
            )
            client.xadd(DEAD_LETTERS, {**fields, b"unreadable": repr(exc).encode()})
    with transaction.atomic():
        events, replaced = _real_over_lost(client, events)
        # The lost events' hours from REAPED, not only from the rows deleted: a redelivered real event finds
        # its lost one already deleted when a flusher died between its commit and its marks.
        hours = _delete_lost(sorted(replaced))
        hours |= {_hour_of(datetime.fromtimestamp(at, UTC)) for at in replaced.values()}
        _insert(events)
        last_used: dict[int, datetime] = {}
        for event in events:
            key_id, at = event["api_key_id"], event["at"]
            if key_id and (key_id not in last_used or at > last_used[key_id]):
                last_used[key_id] = at
        # In key order: two flushes at once (their batches overlap in keys) lock the same rows in the same
        # order, where in each batch's own order they could each hold a row the other waits for (deadlock).
        for key_id, at in sorted(last_used.items()):
            ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=at).update(last_used_at=at)
    # After the commit (so a rollup that reads the mark sees the rows), before the acknowledgement (so a
    # flusher killed in between has the entries claimed again, and marked again, by the next run).
    _mark_hours(client, hours | {_hour_of(event["at"]) for event in events})
    ids = [entry_id for entry_id, _ in entries]
    for start in range(0, len(ids), REDIS_CHUNK):
        chunk = ids[start : start + REDIS_CHUNK]
        client.xack(USAGE_STREAM, GROUP, *chunk)
        client.xdel(USAGE_STREAM, *chunk)
    return len(entries)


def _real_over_lost(client, events: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """The batch with one outcome per request, and the ids whose lost event the real one replaces (each with
    the lost event's time). A request reaped (inflight.py) while its process was only cut off from Redis can
    still settle: it then has a lost event (at its admission) and a real one, and the real one, with its
    usage, is stored. A composite's real events are its hops' (hop_ids.py), all written by its settlement
    at once (composite.settle): its first hop's event stands for them all."""
    reaped = inflight.reaped(client)  # most often none
    if not reaped:
        return events, {}
    first_hops = {hop_ids.of_hop(event_id, 1): event_id for event_id in reaped}
    lost = inflight.LOST_ERROR
    real = {
        reaped_id
        for e in events
        if e["error"] != lost
        and (reaped_id := e["event_id"] if e["event_id"] in reaped else first_hops.get(e["event_id"]))
    }
    lost_ids = [e["event_id"] for e in events if e["error"] == lost and e["event_id"] in reaped]
    if not real and not lost_ids:
        return events, {}
    # Flushes overlap (beat every 2 s, a backlog takes longer): one holding a lost event and one holding its
    # real one each saw the other's uncommitted and kept both. Held to the end of this flush's transaction.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [REPLACING_LOCK_ID])
    if lost_ids:  # the real one came first (settled between its event and the ledger's removal)
        candidates = lost_ids + [hop_ids.of_hop(event_id, 1) for event_id in lost_ids]
        real_stored = UsageEvent.objects.filter(event_id__in=candidates).exclude(error=lost)
        real |= {first_hops.get(i, i) for i in real_stored.values_list("event_id", flat=True)}
    events = [e for e in events if e["error"] != lost or e["event_id"] not in real]
    return events, {event_id: reaped[event_id] for event_id in real}


def _delete_lost(event_ids: list[str]) -> set[int]:
    """Delete the stored lost events of these requests; the hours they were in, for the rollup."""
    if not event_ids:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {UsageEvent._meta.db_table} WHERE event_id = ANY(%s) AND error = %s RETURNING at",  # noqa: S608
            [event_ids, inflight.LOST_ERROR],
        )
        return {_hour_of(at) for (at,) in cursor.fetchall()}


def _read(client, consumer: str | None, batch: int) -> list[tuple[bytes, dict | None]]:
    """Up to ``batch`` entries, REDIS_CHUNK per call: first those a dead flusher left unacknowledged,
    then new ones."""
    consumer = consumer or socket.gethostname()
    entries: list = []
    cursor: bytes | str = "0-0"
    while len(entries) < batch:
        # Redis 6.2 answers [next id, entries]; Redis 7 adds the ids of deleted entries.
        cursor, claimed = client.xautoclaim(
            USAGE_STREAM,
            GROUP,
            consumer,
            min_idle_time=CLAIM_IDLE_MS,
            start_id=cursor,
            count=min(REDIS_CHUNK, batch - len(entries)),
        )[:2]
        entries.extend(claimed)
        if cursor in (b"0-0", "0-0"):  # the whole pending list has been scanned
            break
    while len(entries) < batch:
        wanted = min(REDIS_CHUNK, batch - len(entries))
        fresh = cast(
            "list[tuple[bytes, list]] | None",
            client.xreadgroup(GROUP, consumer, {USAGE_STREAM: ">"}, count=wanted),
        )
        items = [item for _stream, stream_items in fresh or [] for item in stream_items]
        entries.extend(items)
        if len(items) < wanted:
            break
    return entries


# Grouped by team as well as key: the prompt box's events have no key, and a team sees only its own rows.
ROLLUP_SQL = """
INSERT INTO gateway_usagehourly (hour, api_key_id, team_id, department_id, endpoint, via, requests, errors,
    input_tokens, output_tokens, audio_ms, latency_ms_sum, latency_p50_ms, latency_p95_ms, cost)
SELECT date_trunc('hour', at) AS hour, api_key_id, team_id, max(department_id), endpoint, via, count(*),
    count(*) FILTER (WHERE status >= 400), sum(input_tokens), sum(output_tokens), sum(audio_ms), sum(latency_ms),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
    sum(cost)
FROM gateway_usageevent
WHERE at >= %s AND at < %s
GROUP BY 1, api_key_id, team_id, endpoint, via
ON CONFLICT (hour, api_key_id, team_id, endpoint, via) DO UPDATE SET
    requests = EXCLUDED.requests, errors = EXCLUDED.errors, input_tokens = EXCLUDED.input_tokens,
    output_tokens = EXCLUDED.output_tokens, audio_ms = EXCLUDED.audio_ms, latency_ms_sum = EXCLUDED.latency_ms_sum,
    latency_p50_ms = EXCLUDED.latency_p50_ms, latency_p95_ms = EXCLUDED.latency_p95_ms, cost = EXCLUDED.cost,
    department_id = EXCLUDED.department_id
"""

# Billing's ledger: every event of the span, errors included (they carry the tokens the engine reported).
TOKEN_HOURS_SQL = """
SELECT date_trunc('hour', at), max(endpoint_id), endpoint, max(owner_team_id), max(owner_department_id),
    deployment, team_id, max(department_id), count(*), sum(input_tokens), sum(output_tokens), sum(audio_ms)
FROM gateway_usageevent
WHERE at >= %s AND at < %s
GROUP BY 1, endpoint, deployment, team_id
"""

HOUR = timedelta(hours=1)
# Held by a rollup until its transaction ends (audit's chain lock and the registry's blob locks are others).
ROLLUP_LOCK_ID = 0x7573_6167  # "usag"
# Held by a flush that may replace a lost event with its real one (``_real_over_lost``).
REPLACING_LOCK_ID = 0x7573_6772  # "usgr"


def _recompute(cursor, start: datetime, end: datetime) -> None:
    """The rollups of ``[start, end)`` (whole hours) and billing's ledger rows of the same hours."""
    # Rebuilt whole: a group whose only event was deleted (a lost event its real one replaced, under
    # another endpoint or hour) would otherwise keep its row.
    cursor.execute("DELETE FROM gateway_usagehourly WHERE hour >= %s AND hour < %s", [start, end])
    cursor.execute(ROLLUP_SQL, [start, end])
    cursor.execute(TOKEN_HOURS_SQL, [start, end])
    rows = [
        meters.TokenHour(
            hour=hour,
            endpoint_id=endpoint_id,
            endpoint=endpoint,
            owner_team_id=owner_team_id,
            owner_department_id=owner_department_id,
            deployment=deployment,
            team_id=team_id,
            department_id=department_id,
            requests=requests,
            input_tokens=int(input_tokens or 0),
            output_tokens=int(output_tokens or 0),
            audio_ms=int(audio_ms or 0),
        )
        for (
            hour,
            endpoint_id,
            endpoint,
            owner_team_id,
            owner_department_id,
            deployment,
            team_id,
            department_id,
            requests,
            input_tokens,
            output_tokens,
            audio_ms,
        ) in cursor.fetchall()
    ]
    meters.replace_token_hours(start, end, rows)


def _hour_of(at: datetime) -> int:
    return int(at.timestamp()) // 3600 * 3600


def _mark_hours(client, hours: set[int]) -> None:
    if hours:
        pipe = client.pipeline(transaction=False)
        for hour in hours:
            pipe.hincrby(DIRTY_HOURS, str(hour), 1)
        pipe.execute()


def _spans(hours: list[int]) -> list[tuple[int, int]]:
    """Sorted hours as [start, end) spans of consecutive hours: one statement per span, not per hour."""
    spans: list[tuple[int, int]] = []
    for hour in hours:
        if spans and spans[-1][1] == hour:
            spans[-1] = (spans[-1][0], hour + 3600)
        else:
            spans.append((hour, hour + 3600))
    return spans


def rollup(since: datetime | None = None) -> int:
    """Recompute the hourly rollups of every hour the flusher marked, and of the previous and the current
    hour; with ``since``, of every hour from then on. Returns how many marked hours were recomputed (none when
    another rollup was running: see the module's docstring)."""
    now = datetime.now(UTC)
    # Hours of months whose raw events retention has dropped are not recomputed: from what is left (a late
    # event at most) they would be rewritten, and what was billed for them lost.
    kept = partitions.kept_from(now)
    horizon = datetime(kept.year, kept.month, 1, tzinfo=UTC)
    if since is not None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ROLLUP_LOCK_ID])
            _recompute(
                cursor,
                max(since.replace(minute=0, second=0, microsecond=0), horizon),
                datetime.fromtimestamp(_hour_of(now) + 3600, UTC),
            )
        return 0
    client = keystate.client()
    marked = {int(hour): count for hour, count in client.hgetall(DIRTY_HOURS).items()}
    hours = sorted(marked)[:MAX_HOURS_PER_ROLLUP]
    expired = [hour for hour in hours if hour < horizon.timestamp()]
    if expired:
        logger.warning(
            "usage: late events of %s hour(s) before %s, whose raw events are past retention "
            "(PORTFOLIO_USAGE_RETENTION_MONTHS), are not billed: the first is %s",
            len(expired),
            kept,
            datetime.fromtimestamp(expired[0], UTC),
        )
    # The previous and the current hour always (as events arrive), and every marked hour outside them.
    recent = (_hour_of(now - HOUR), _hour_of(now) + 3600)
    kept_hours = [hour for hour in hours if hour >= horizon.timestamp() and not recent[0] <= hour < recent[1]]
    spans = [recent, *_spans(kept_hours)]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [ROLLUP_LOCK_ID])
        if not cursor.fetchone()[0]:
            logger.info(
                "usage: a rollup is already running; this one is skipped (the next run does its hours)"
            )
            return 0
        for start, end in spans:
            _recompute(cursor, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    if hours:
        client.eval(
            _CLEAR_UNCHANGED, 1, DIRTY_HOURS, *(value for hour in hours for value in (hour, marked[hour]))
        )
    return len(hours)


def latest_event_time() -> datetime | None:
    return UsageEvent.objects.aggregate(latest=Max("at"))["latest"]

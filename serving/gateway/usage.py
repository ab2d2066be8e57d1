"""Usage events: from the gateway's Redis stream into PostgreSQL in batches, then hourly rollups.

The flusher reads through a consumer group and acknowledges only after the batch is committed; entries a
killed flusher left unacknowledged are claimed again by the next run, and inserts ignore event ids that
are already stored, so nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from django.db import connection, transaction
from django.db.models import Max

from serving.gateway import keystate
from serving.gateway.app import USAGE_STREAM
from serving.gateway.models import ApiKey, UsageEvent

logger = logging.getLogger(__name__)
GROUP = "flusher"
DEAD_LETTERS = f"{USAGE_STREAM}:unreadable"
CLAIM_IDLE_MS = 30_000


def _ensure_group(client) -> None:
    import redis

    try:
        client.xgroup_create(USAGE_STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _event(fields: dict) -> UsageEvent:
    """A stream entry (one field ``e``: the event as JSON, see Gateway._event) as a row to insert."""
    e = orjson.loads(fields[b"e"])
    return UsageEvent(
        event_id=e["id"], at=datetime.fromtimestamp(float(e["at"]), UTC), api_key_id=e["key"] or None,
        team_id=e["team"] or None, department_id=e["department"] or None, endpoint=e["endpoint"],
        deployment=e["deployment"], adapter=e["adapter"], model_version_id=e["version"] or None,
        replica_id=e["replica"] or None, kind=e["kind"], stream=bool(e["stream"]), input_tokens=e["in"],
        output_tokens=e["out"], latency_ms=e["latency_ms"], ttft_ms=e["ttft_ms"], status=e["status"],
        error=e["error"], cost=Decimal(e["cost_micros"]) / Decimal(1_000_000),
    )


def flush(batch: int = 2000, consumer: str | None = None) -> int:
    """Move up to ``batch`` events (first any left pending by a dead flusher) into PostgreSQL."""
    client = keystate.client()
    _ensure_group(client)
    consumer = consumer or socket.gethostname()
    # Redis 6.2 answers [next id, entries]; Redis 7 adds the ids of deleted entries.
    claimed = client.xautoclaim(USAGE_STREAM, GROUP, consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0",
                                count=batch)[1]
    entries = list(claimed)
    if len(entries) < batch:
        fresh = client.xreadgroup(GROUP, consumer, {USAGE_STREAM: ">"}, count=batch - len(entries))
        for _stream, items in fresh or []:
            entries.extend(items)
    entries = [(entry_id, fields) for entry_id, fields in entries if fields]
    if not entries:
        return 0
    events = []
    for entry_id, fields in entries:
        try:
            events.append(_event(fields))
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            # One unreadable entry must not hold up every later one: set it aside, whole, for a person to see.
            logger.error("usage: stream entry %s is not a usage event (%r); moved to %s", entry_id, exc, DEAD_LETTERS)
            client.xadd(DEAD_LETTERS, {**fields, b"unreadable": repr(exc).encode()})
    with transaction.atomic():
        UsageEvent.objects.bulk_create(events, ignore_conflicts=True, batch_size=1000)
        last_used = {}
        for event in events:
            if event.api_key_id and (event.api_key_id not in last_used or event.at > last_used[event.api_key_id]):
                last_used[event.api_key_id] = event.at
        for key_id, at in last_used.items():
            ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=at).update(last_used_at=at)
    ids = [entry_id for entry_id, _ in entries]
    client.xack(USAGE_STREAM, GROUP, *ids)
    client.xdel(USAGE_STREAM, *ids)
    return len(entries)


ROLLUP_SQL = """
INSERT INTO gateway_usagehourly (hour, api_key_id, team_id, department_id, endpoint, requests, errors,
    input_tokens, output_tokens, latency_ms_sum, latency_p50_ms, latency_p95_ms, cost)
SELECT date_trunc('hour', at) AS hour, api_key_id, max(team_id), max(department_id), endpoint, count(*),
    count(*) FILTER (WHERE status >= 400), sum(input_tokens), sum(output_tokens), sum(latency_ms),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
    sum(cost)
FROM gateway_usageevent
WHERE at >= %s AND at < %s
GROUP BY 1, api_key_id, endpoint
ON CONFLICT (hour, api_key_id, endpoint) DO UPDATE SET
    requests = EXCLUDED.requests, errors = EXCLUDED.errors, input_tokens = EXCLUDED.input_tokens,
    output_tokens = EXCLUDED.output_tokens, latency_ms_sum = EXCLUDED.latency_ms_sum,
    latency_p50_ms = EXCLUDED.latency_p50_ms, latency_p95_ms = EXCLUDED.latency_p95_ms, cost = EXCLUDED.cost,
    team_id = EXCLUDED.team_id, department_id = EXCLUDED.department_id
"""


def rollup(since: datetime | None = None) -> None:
    """Recompute the hourly rollups from ``since`` (default: the previous and the current hour)."""
    now = datetime.now(UTC)
    start = (since or now - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ROLLUP_SQL, [start, now + timedelta(hours=1)])


def latest_event_time() -> datetime | None:
    return UsageEvent.objects.aggregate(latest=Max("at"))["latest"]

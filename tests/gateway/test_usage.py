"""Usage rollups: hourly sums and latency percentiles per key and endpoint, recomputed idempotently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from serving.gateway import services as key_services
from serving.gateway import usage
from serving.gateway.models import UsageEvent, UsageHourly
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


def test_events_roll_up_per_hour_key_and_endpoint(org, team):
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    hour = datetime(2026, 11, 23, 9, tzinfo=UTC)
    for i, latency in enumerate([10, 20, 30, 40, 500]):
        UsageEvent.objects.create(
            event_id=f"e{i}",
            at=hour.replace(minute=i),
            api_key=key,
            team_id=team.pk,
            department_id=team.department_id,
            endpoint="router",
            kind="chat",
            input_tokens=10,
            output_tokens=5,
            latency_ms=latency,
            status=200 if i < 4 else 502,
            cost=Decimal("0.001"),
        )
    usage.rollup(since=hour)
    usage.rollup(since=hour)  # idempotent: recomputed, not added twice
    row = UsageHourly.objects.get()
    assert (row.hour, row.requests, row.errors, row.input_tokens, row.output_tokens) == (hour, 5, 1, 50, 25)
    assert row.latency_p50_ms == 30 and row.latency_p95_ms >= 400
    assert row.cost == Decimal("0.005") and row.team_id == team.pk


def test_an_unreadable_stream_entry_is_set_aside_and_does_not_hold_up_the_others(org, team):
    import orjson

    from serving.gateway import keystate
    from serving.gateway.events import USAGE_STREAM

    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    good = {
        "id": "good-1",
        "at": 1795968351.5,
        "key": key.pk,
        "team": team.pk,
        "department": team.department_id,
        "endpoint": "router",
        "deployment": "d",
        "adapter": "",
        "version": None,
        "replica": None,
        "kind": "chat",
        "stream": 0,
        "in": 12,
        "out": 3,
        "latency_ms": 40,
        "ttft_ms": None,
        "status": 200,
        "error": "",
        "cost_micros": 15,
    }
    redis = keystate.client()
    redis.xadd(USAGE_STREAM, {"id": "from-an-older-gateway", "in": "3"})
    redis.xadd(USAGE_STREAM, {"e": orjson.dumps(good)})
    assert usage.flush() == 2
    assert usage.flush() == 0, "nothing is left pending"
    event = UsageEvent.objects.get()
    assert (event.event_id, event.input_tokens, event.output_tokens, event.cost) == (
        "good-1",
        12,
        3,
        Decimal("0.000015"),
    )
    ((_, fields),) = redis.xrange(usage.DEAD_LETTERS)
    assert fields[b"id"] == b"from-an-older-gateway" and b"KeyError" in fields[b"unreadable"]


# --- Rollups catch up on events that arrive late ----------------------------------------------------------
def _stream_event(key, team, event_id: str, at: datetime, **figures) -> None:
    """An event as the gateway writes it to the usage stream (see events.usage_event)."""
    import orjson

    from serving.gateway import keystate
    from serving.gateway.events import USAGE_STREAM

    event = {
        "id": event_id,
        "at": at.timestamp(),
        "key": key.pk,
        "team": team.pk,
        "department": team.department_id,
        "endpoint": "router",
        "deployment": "d",
        "adapter": "",
        "version": None,
        "replica": None,
        "kind": "chat",
        "stream": 0,
        "in": 10,
        "out": 5,
        "latency_ms": 40,
        "ttft_ms": None,
        "status": 200,
        "error": "",
        "cost_micros": 1000,
        **figures,
    }
    keystate.client().xadd(USAGE_STREAM, {"e": orjson.dumps(event)})


def _dirty_hours() -> dict:
    from serving.gateway import keystate

    return keystate.client().hgetall(usage.DIRTY_HOURS)


def test_events_flushed_late_for_an_hour_long_past_reach_its_rollup(org, team):
    """A worker outage: the rollup runs while three-day-old events still sit in the stream, then they are
    flushed; the next rollup recomputes exactly that hour (and later ones for the same hour add up)."""
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    long_ago = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    _stream_event(key, team, "late-1", long_ago + timedelta(minutes=10))
    _stream_event(key, team, "late-2", long_ago + timedelta(minutes=50), **{"in": 30})
    usage.rollup()  # the rollup runs during the outage
    assert not UsageHourly.objects.exists()
    assert usage.flush() == 2
    usage.rollup()
    row = UsageHourly.objects.get(hour=long_ago)
    assert (row.requests, row.input_tokens, row.output_tokens, row.cost) == (2, 40, 10, Decimal("0.002"))
    assert _dirty_hours() == {}, "recomputed hours are cleared"

    _stream_event(key, team, "later-still", long_ago + timedelta(minutes=59))
    usage.flush()
    usage.rollup()
    assert UsageHourly.objects.get(hour=long_ago).requests == 3
    assert UsageHourly.objects.count() == 1


def test_an_hour_marked_again_while_its_rollup_runs_stays_marked_for_the_next_run(org, team, monkeypatch):
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    _stream_event(key, team, "first", hour + timedelta(minutes=1))
    usage.flush()
    real_spans = usage._spans

    def spans_then_a_flush_lands(hours):
        # The rollup has read the marks; an event for the same hour is flushed before it clears them.
        _stream_event(key, team, "meanwhile", hour + timedelta(minutes=2))
        usage.flush()
        return real_spans(hours)

    monkeypatch.setattr(usage, "_spans", spans_then_a_flush_lands)
    usage.rollup()
    monkeypatch.setattr(usage, "_spans", real_spans)
    assert str(int(hour.timestamp())).encode() in _dirty_hours(), "marked again meanwhile: kept"
    usage.rollup()
    assert UsageHourly.objects.get(hour=hour).requests == 2
    assert _dirty_hours() == {}


def test_a_long_backlog_is_rolled_up_oldest_first_a_bounded_number_of_hours_per_run(org, team, monkeypatch):
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    monkeypatch.setattr(usage, "MAX_HOURS_PER_ROLLUP", 2)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=10)
    for n in (0, 1, 2, 5):  # three consecutive hours and one apart
        _stream_event(key, team, f"e{n}", start + timedelta(hours=n, minutes=30))
    usage.flush()
    assert usage.rollup() == 2
    assert sorted(UsageHourly.objects.values_list("hour", flat=True)) == [start, start + timedelta(hours=1)]
    assert usage.rollup() == 2 and usage.rollup() == 0
    assert UsageHourly.objects.count() == 4 and _dirty_hours() == {}


def test_an_event_with_a_malformed_figure_is_set_aside_alone_and_a_redelivered_one_is_stored_once(org, team):
    """Numbers are checked per entry: one bad count must not fail the whole batch's insert (it used to: the
    batch stayed pending and was retried, and failed, for ever); an event flushed twice is one row."""
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    at = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    _stream_event(key, team, "fine-1", at)
    _stream_event(key, team, "bad-tokens", at, **{"in": "many"})
    _stream_event(key, team, "fine-2", at, **{"out": 7, "ttft_ms": 12, "stream": 1})
    _stream_event(key, team, "fine-1", at)  # redelivered: the same id and time
    assert usage.flush() == 4
    assert usage.flush() == 0, "nothing is left pending"
    stored = {e.event_id: e for e in UsageEvent.objects.all()}
    assert sorted(stored) == ["fine-1", "fine-2"]
    second = stored["fine-2"]
    assert (second.output_tokens, second.ttft_ms, second.stream, second.cost) == (
        7,
        12,
        True,
        Decimal("0.001"),
    )
    assert (second.api_key_id, second.team_id, second.at) == (key.pk, team.pk, at)
    from serving.gateway import keystate

    ((_, fields),) = keystate.client().xrange(usage.DEAD_LETTERS)
    assert b"bad-tokens" in fields[b"e"] and b"ValueError" in fields[b"unreadable"]
    key.refresh_from_db()
    assert key.last_used_at == at


def test_the_flusher_holds_redis_a_chunk_at_a_time_and_still_moves_its_whole_batch(org, team, monkeypatch):
    """Redis runs every gateway's admission on its one thread: a read of a whole batch (2,000 events) held it
    about 5 ms, a wait for every request that came in meanwhile. Claims, reads, acknowledgements and
    deletions go a chunk at a time; the batch is still one insert, and its size is still the bound."""
    import redis as redis_lib
    from django.conf import settings

    from serving.gateway import keystate
    from serving.gateway.events import USAGE_STREAM

    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    at = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    usage._ensure_group(client)
    for i in range(6):
        _stream_event(key, team, f"left-{i}", at)
    client.xreadgroup(usage.GROUP, "dead-flusher", {USAGE_STREAM: ">"}, count=6)  # read, never acknowledged
    for i in range(9):
        _stream_event(key, team, f"new-{i}", at)
    sizes: list[tuple[str, int]] = []
    execute = client.execute_command

    def recording(*args, **options):
        reply = execute(*args, **options)
        name = str(args[0]).upper()
        if name == "XAUTOCLAIM":
            sizes.append((name, len(reply[1])))
        elif name == "XREADGROUP":
            sizes.append((name, sum(len(items) for _stream, items in reply or [])))
        elif name in ("XACK", "XDEL"):
            sizes.append((name, len(args) - 3 if name == "XACK" else len(args) - 2))
        return reply

    client.execute_command = recording  # type: ignore[method-assign]
    monkeypatch.setattr(keystate, "client", lambda: client)
    monkeypatch.setattr(usage, "CLAIM_IDLE_MS", 0)
    monkeypatch.setattr(usage, "REDIS_CHUNK", 4)

    assert usage.flush(batch=10) == 10, "the batch is still the bound"
    assert usage.flush(batch=10) == 5
    assert usage.flush(batch=10) == 0
    assert UsageEvent.objects.count() == 15
    assert client.xpending(USAGE_STREAM, usage.GROUP)["pending"] == 0
    assert max(size for _name, size in sizes) == 4, sizes
    assert {name for name, _size in sizes} == {"XAUTOCLAIM", "XREADGROUP", "XACK", "XDEL"}

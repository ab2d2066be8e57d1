"""Usage rollups: hourly sums and latency percentiles per key and endpoint, recomputed idempotently."""

from __future__ import annotations

from datetime import UTC, datetime
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
            event_id=f"e{i}", at=hour.replace(minute=i), api_key=key, team_id=team.pk,
            department_id=team.department_id, endpoint="router", kind="chat", input_tokens=10, output_tokens=5,
            latency_ms=latency, status=200 if i < 4 else 502, cost=Decimal("0.001"),
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
    from serving.gateway.app import USAGE_STREAM

    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    good = {"id": "good-1", "at": 1795968351.5, "key": key.pk, "team": team.pk, "department": team.department_id,
            "endpoint": "router", "deployment": "d", "adapter": "", "version": None, "replica": None, "kind": "chat",
            "stream": 0, "in": 12, "out": 3, "latency_ms": 40, "ttft_ms": None, "status": 200, "error": "",
            "cost_micros": 15}
    redis = keystate.client()
    redis.xadd(USAGE_STREAM, {"id": "from-an-older-gateway", "in": "3"})
    redis.xadd(USAGE_STREAM, {"e": orjson.dumps(good)})
    assert usage.flush() == 2
    assert usage.flush() == 0, "nothing is left pending"
    event = UsageEvent.objects.get()
    assert (event.event_id, event.input_tokens, event.output_tokens, event.cost) == ("good-1", 12, 3, Decimal("0.000015"))
    (_, fields), = redis.xrange(usage.DEAD_LETTERS)
    assert fields[b"id"] == b"from-an-older-gateway" and b"KeyError" in fields[b"unreadable"]

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

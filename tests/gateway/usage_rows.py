"""Hourly usage rows as the gateway's rollup writes them, for the key and usage pages' tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from serving.gateway.models import ApiKey, UsageHourly


def rollup(key: ApiKey | None, hour: datetime, *, endpoint: str = "support-bot", team_id=None, **figures):
    values = {
        "requests": 10,
        "errors": 1,
        "input_tokens": 1000,
        "output_tokens": 500,
        "latency_ms_sum": 2000,
        "latency_p50_ms": 150,
        "latency_p95_ms": 400,
        "cost": Decimal("0.25"),
    } | figures
    return UsageHourly.objects.create(
        hour=hour,
        api_key=key,
        team_id=team_id if team_id is not None else key.team_id,
        department_id=key.team.department_id if key else None,
        endpoint=endpoint,
        **values,
    )


def this_hour(hours_ago: int = 0) -> datetime:
    return timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=hours_ago
    )

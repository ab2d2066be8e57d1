"""Migration 0007: days that two rollups at once wrote twice are summed again from their hours before the day
ledger's rows are held unique; other days are left as they are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("restores_latest_schema")]

BEFORE = [("billing", "0006_audio_seconds")]
AFTER = [("billing", "0007_token_days_once")]


def test_a_day_written_twice_is_summed_again_from_its_hours_and_other_days_are_kept():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Hour, Day = old.get_model("billing", "TokenUsage"), old.get_model("billing", "TokenDay")
    twice, once = datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    row = {"endpoint": "router", "deployment": "d", "team_id": 7}  # ids left null, as the prompt box's are
    Hour.objects.create(hour=twice + timedelta(hours=3), requests=2, input_tokens=20, **row)
    Hour.objects.create(hour=twice + timedelta(hours=9), requests=3, input_tokens=30, audio_ms=5, **row)
    Hour.objects.create(
        hour=twice + timedelta(hours=9), endpoint="other", deployment="d", team_id=7, requests=1
    )
    for _ in range(2):
        Day.objects.create(day=twice, requests=5, input_tokens=50, audio_ms=5, **row)
    Day.objects.create(day=twice, endpoint="other", deployment="d", team_id=7, requests=1)
    Day.objects.create(day=once, requests=4, **row)  # no hours behind it here: left alone all the same

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("billing", "TokenDay")
    assert sorted(new.objects.values_list("day", "endpoint", "requests", "input_tokens", "audio_ms")) == [
        (twice, "other", 1, 0, 0),
        (twice, "router", 5, 50, 5),
        (once, "router", 4, 0, 0),
    ]

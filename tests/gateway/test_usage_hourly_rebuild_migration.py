"""Migration 0009: the prompt box's hourly rollups, which before 0008 put every team's key-less calls of an
hour into one row under the highest team's id, are rebuilt per team from the raw events; hours whose raw
events retention dropped, and rows of keyed calls, are left as they are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("restores_latest_schema")]

BEFORE = [("gateway", "0008_usage_hourly_per_team")]
AFTER = [("gateway", "0009_usage_hourly_keyless_per_team")]
COLUMNS = ("hour", "api_key_id", "team_id", "department_id", "endpoint", "requests", "errors", "input_tokens")


def test_key_less_hours_mixed_across_teams_are_split_per_team_and_hours_without_raw_events_are_kept(team):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Event, Hourly = old.get_model("gateway", "UsageEvent"), old.get_model("gateway", "UsageHourly")
    Key = old.get_model("gateway", "ApiKey")
    # Two days ago: in a monthly partition. January 2025: its partition long dropped, so a late event of
    # it sits in the default partition.
    mixed = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    dropped, late = datetime(2025, 1, 10, 9, tzinfo=UTC), datetime(2025, 1, 11, 9, tzinfo=UTC)
    call = {"endpoint": "router", "kind": "chat", "status": 200, "input_tokens": 10, "output_tokens": 5}
    Event.objects.bulk_create(
        [
            Event(event_id="box-a1", at=mixed + timedelta(minutes=5), team_id=3, department_id=30, **call),
            Event(event_id="box-a2", at=mixed + timedelta(minutes=9), team_id=3, department_id=30, **call),
            Event(
                event_id="box-b1",
                at=mixed + timedelta(minutes=20),
                team_id=5,
                department_id=50,
                cost=Decimal("0.5"),
                **{**call, "status": 500},
            ),
            Event(event_id="box-late", at=late + timedelta(minutes=1), team_id=9, department_id=90, **call),
        ]
    )
    key = Key.objects.create(team_id=team.pk, name="router prod", key_id="k0009test", secret_hash="x")
    row = {"endpoint": "router", "via": ""}
    # What the rollup before 0008 wrote: team 3's two calls and team 5's one in one row, under team 5.
    Hourly.objects.create(
        hour=mixed, team_id=5, department_id=50, requests=3, errors=1, input_tokens=30, cost=1, **row
    )
    Hourly.objects.create(hour=mixed, api_key_id=key.pk, team_id=team.pk, requests=7, input_tokens=70, **row)
    Hourly.objects.create(hour=dropped, team_id=9, department_id=90, requests=4, input_tokens=40, **row)
    Hourly.objects.create(hour=late, team_id=9, department_id=90, requests=6, input_tokens=60, **row)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("gateway", "UsageHourly")
    assert sorted(new.objects.values_list(*COLUMNS), key=repr) == sorted(
        [
            (mixed, None, 3, 30, "router", 2, 0, 20),
            (mixed, None, 5, 50, "router", 1, 1, 10),
            (mixed, key.pk, team.pk, None, "router", 7, 0, 70),  # keyed: left alone
            (dropped, None, 9, 90, "router", 4, 0, 40),  # no raw events left: kept
            (late, None, 9, 90, "router", 6, 0, 60),  # one late event of six: kept, not rebuilt from it
        ],
        key=repr,
    )
    rebuilt = new.objects.get(hour=mixed, team_id=5)
    assert (rebuilt.output_tokens, rebuilt.cost, rebuilt.via) == (5, Decimal("0.5"), "")

"""Usage events in monthly partitions: a month's events land in its partition, a redelivered event is
still stored once, rows that fell into the default partition move when their month's partition is made
(and `portfolio migrate` makes it for every month left there, an upgrade's history included), and a month
past retention is dropped whole while the rollups and billing's ledger keep it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from portfolio.billing.models import TokenUsage
from serving.gateway import partitions, usage
from serving.gateway.models import UsageEvent, UsageHourly

pytestmark = pytest.mark.django_db(transaction=True)
# Half a year ago: inside the default retention, and before the months whose partitions are made ahead
# of time (from the previous month on), so its events land in the default partition.
_TODAY = datetime.now(UTC)
_MONTHS = _TODAY.year * 12 + _TODAY.month - 1 - 6
HALF_A_YEAR_AGO = datetime(_MONTHS // 12, _MONTHS % 12 + 1, 9, tzinfo=UTC)


def event(event_id: str, at: datetime, **fields) -> UsageEvent:
    defaults = {"endpoint": "router", "kind": "chat", "status": 200, "input_tokens": 10, "output_tokens": 5}
    return UsageEvent(event_id=event_id, at=at, **{**defaults, **fields})


def partition_of(event_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM gateway_usageevent WHERE event_id = %s", [event_id]
        )
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def _no_partitions_left_from_an_earlier_run():
    """Partitions are DDL: they outlive a test's flush (and a reused test database)."""
    made = [
        "gateway_usageevent_y2031m05",
        "gateway_usageevent_y2025m01",
        "gateway_usageevent_y2025m02",
        "gateway_usageevent_y2020m03",
        f"gateway_usageevent_y{HALF_A_YEAR_AGO:%Y}m{HALF_A_YEAR_AGO:%m}",
    ]
    with connection.cursor() as cursor:
        for name in made:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
    yield
    with connection.cursor() as cursor:
        for name in made:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")


def test_the_table_is_partitioned_by_month_and_the_months_around_now_exist():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'gateway_usageevent'::regclass"
        )
        assert cursor.fetchone() == ("r",)
    now = datetime.now(UTC)
    assert f"gateway_usageevent_y{now.year:04d}m{now.month:02d}" in partitions.partitions()


def test_an_event_lands_in_its_months_partition_and_a_redelivery_is_stored_once():
    at = datetime.now(UTC).replace(microsecond=0)
    UsageEvent.objects.bulk_create([event("req-1", at)], ignore_conflicts=True)
    UsageEvent.objects.bulk_create([event("req-1", at)], ignore_conflicts=True)  # the stream redelivers it
    assert UsageEvent.objects.filter(event_id="req-1").count() == 1
    assert partition_of("req-1") == f"gateway_usageevent_y{at.year:04d}m{at.month:02d}"


def test_rows_in_the_default_partition_move_into_their_months_partition_when_it_is_made():
    far = datetime(2031, 5, 17, 8, tzinfo=UTC)
    UsageEvent.objects.bulk_create([event("req-far", far)])
    assert partition_of("req-far") == "gateway_usageevent_default"
    assert partitions.create(far.date().replace(day=1)) is True
    assert partition_of("req-far") == "gateway_usageevent_y2031m05"
    assert partitions.create(far.date().replace(day=1)) is False  # idempotent


def test_portfolio_migrate_gives_months_left_in_the_default_partition_their_own_and_drops_those_expired(
    settings, monkeypatch, capsys
):
    """Migration 0004 copied an upgraded install's whole history into the default partition, and only the
    months around the upgrade got partitions: the rows of earlier months stayed in the default partition,
    which no retention drops, for ever."""
    import django
    from django.core import management

    from portfolio import cli, dbroles
    from portfolio.audit.models import AuditEvent
    from portfolio.registry import reinspection

    settings.USAGE_RETENTION_MONTHS = 13
    monkeypatch.setattr(django, "setup", lambda: None)  # set up already
    monkeypatch.setattr(management, "call_command", lambda *args, **kwargs: None)  # migrated already
    monkeypatch.setattr(dbroles, "grant_app_role", lambda: [])
    monkeypatch.setattr(reinspection, "read_missing_architectures", lambda log: None)
    UsageEvent.objects.bulk_create(
        [event("req-ancient", datetime(2020, 3, 5, tzinfo=UTC)), event("req-kept", HALF_A_YEAR_AGO)]
    )
    kept = f"gateway_usageevent_y{HALF_A_YEAR_AGO:%Y}m{HALF_A_YEAR_AGO:%m}"
    assert partition_of("req-ancient") == partition_of("req-kept") == partitions.DEFAULT

    cli.main(["migrate"])
    printed = capsys.readouterr().out
    assert "created partition gateway_usageevent_y2020m03" in printed
    assert f"created partition {kept}" in printed
    assert "dropped partition gateway_usageevent_y2020m03" in printed
    assert not UsageEvent.objects.filter(event_id="req-ancient").exists()
    assert partition_of("req-kept") == kept
    [dropped] = AuditEvent.objects.filter(action="usage.drop_month")
    assert dropped.object_id == "gateway_usageevent_y2020m03"
    assert dropped.after == {"month": "2020-03", "rows": 1, "retention_months": 13}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {partitions.DEFAULT}")  # noqa: S608 - our names
        assert cursor.fetchone() == (0,)


def test_a_month_past_retention_is_dropped_whole_and_its_rollups_and_ledger_rows_stay(settings):
    settings.USAGE_RETENTION_MONTHS = 100  # rolled up while its raw events were kept
    old = datetime(2025, 1, 10, 9, 30, tzinfo=UTC)
    partitions.create(old.date().replace(day=1))
    UsageEvent.objects.bulk_create([event("req-old", old, team_id=7, endpoint_id=3)])
    usage.rollup(since=old)
    settings.USAGE_RETENTION_MONTHS = 2
    assert UsageHourly.objects.filter(hour__year=2025).count() == 1
    assert TokenUsage.objects.filter(hour__year=2025).count() == 1

    dropped = partitions.drop_expired(datetime(2025, 4, 2, tzinfo=UTC))
    assert dropped == ["gateway_usageevent_y2025m01"]
    assert not UsageEvent.objects.filter(event_id="req-old").exists()
    assert UsageHourly.objects.filter(hour__year=2025).count() == 1
    assert TokenUsage.objects.filter(hour__year=2025).count() == 1
    # A month still inside the retention stays.
    partitions.create(datetime(2025, 2, 1, tzinfo=UTC).date())
    assert partitions.drop_expired(datetime(2025, 4, 2, tzinfo=UTC)) == []


def test_a_late_event_of_a_month_past_retention_does_not_rewrite_what_was_billed(settings):
    """The month's raw events are dropped; an event of an hour of it arrives late (a gateway's clock far
    off) and its hour is marked: the rollup rewrote the hour from what is left, the late event alone, and
    the ledger lost the hour's billed tokens (credited back on the next statement as an adjustment)."""
    from serving.gateway import keystate

    settings.USAGE_RETENTION_MONTHS = 100
    old = datetime(2025, 1, 10, 9, 30, tzinfo=UTC)
    partitions.create(old.date().replace(day=1))
    UsageEvent.objects.bulk_create([event(f"req-{n}", old, team_id=7, endpoint_id=3) for n in range(3)])
    usage.rollup(since=old)
    settings.USAGE_RETENTION_MONTHS = 2
    assert partitions.drop_expired() == ["gateway_usageevent_y2025m01"]
    billed = TokenUsage.objects.get(hour__year=2025)
    assert (billed.requests, billed.input_tokens) == (3, 30)

    UsageEvent.objects.bulk_create([event("req-late", old, team_id=7, endpoint_id=3)])
    client = keystate.client()
    hour = int(old.timestamp()) // 3600 * 3600
    usage._mark_hours(client, {hour})
    usage.rollup()
    usage.rollup(since=old)
    kept = TokenUsage.objects.get(hour__year=2025)
    assert (kept.requests, kept.input_tokens) == (3, 30)
    assert UsageHourly.objects.get(hour__year=2025).requests == 3
    assert not client.hexists(usage.DIRTY_HOURS, str(hour)), "the mark is cleared, not kept for ever"

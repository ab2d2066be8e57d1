"""Dropping a month of raw usage events past retention is audited: the month, the rows dropped and the
retention, written by the system in the drop's transaction, so a drop that fails leaves no row and a row
never speaks of a drop that did not happen."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from portfolio.audit.models import AuditEvent
from serving.gateway import partitions
from serving.gateway.models import UsageEvent
from tests.gateway.test_usage_partitions import event

pytestmark = pytest.mark.django_db(transaction=True)
OLD = datetime(2025, 1, 10, 9, 30, tzinfo=UTC)
MADE = ("gateway_usageevent_y2025m01", "gateway_usageevent_y2025m02")


@pytest.fixture(autouse=True)
def _no_partitions_left_from_an_earlier_run():
    """Partitions are DDL: they outlive a test's flush (and a reused test database)."""
    with connection.cursor() as cursor:
        for name in MADE:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
    yield
    with connection.cursor() as cursor:
        for name in MADE:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def old_month(settings):
    """January 2025's partition with three events, made while its retention had not passed."""
    settings.USAGE_RETENTION_MONTHS = 100
    partitions.create(OLD.date().replace(day=1))
    UsageEvent.objects.bulk_create([event(f"req-{n}", OLD, team_id=7, endpoint_id=3) for n in range(3)])
    settings.USAGE_RETENTION_MONTHS = 2


def test_a_dropped_month_is_audited_with_its_rows_and_the_retention(old_month):
    partitions.create(datetime(2025, 2, 1, tzinfo=UTC).date())  # inside the retention: kept, no row
    assert partitions.drop_expired(datetime(2025, 4, 2, tzinfo=UTC)) == ["gateway_usageevent_y2025m01"]
    assert not UsageEvent.objects.filter(at=OLD).exists()
    [row] = AuditEvent.objects.filter(action="usage.drop_month")
    assert (row.actor_kind, row.object_type, row.object_id) == (
        "system",
        "gateway.usageevent",
        "gateway_usageevent_y2025m01",
    )
    assert row.after == {"month": "2025-01", "rows": 3, "retention_months": 2}
    assert partitions.drop_expired(datetime(2025, 4, 2, tzinfo=UTC)) == []
    assert AuditEvent.objects.filter(action="usage.drop_month").count() == 1  # nothing dropped: no row


def test_a_drop_that_fails_keeps_the_rows_and_writes_no_audit_row(old_month, monkeypatch):
    from portfolio.audit import services as audit

    def unavailable(*args, **kwargs):
        raise RuntimeError("the audit chain is unavailable")

    monkeypatch.setattr(audit, "record", unavailable)
    with pytest.raises(RuntimeError):
        partitions.drop_expired(datetime(2025, 4, 2, tzinfo=UTC))
    assert "gateway_usageevent_y2025m01" in partitions.partitions()  # still attached, rows and all
    assert UsageEvent.objects.filter(at=OLD).count() == 3
    assert not AuditEvent.objects.filter(action="usage.drop_month").exists()

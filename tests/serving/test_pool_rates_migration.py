"""Serving's data migration of the pools' former rate fields into billing's price book."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("restores_latest_schema")]

BEFORE = [("serving", "0003_endpointshare")]
AFTER = [("serving", "0004_pool_rates_to_price_book")]


def test_a_pools_non_zero_rates_become_its_first_price_version_from_its_creation_on_the_hour():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    Pool = executor.loader.project_state(BEFORE).apps.get_model("serving", "ComputePool")
    created = datetime(2026, 3, 4, 9, 41, 7, tzinfo=UTC)
    priced = Pool.objects.create(
        name="gpu-a",
        kind="gpu",
        gpu_hour_rate=Decimal("2.5"),
        cpu_core_hour_rate=Decimal("0.04"),
        created_at=created,
    )
    Pool.objects.create(name="free", kind="cpu")

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    Price = executor.loader.project_state(AFTER).apps.get_model("billing", "Price")
    rows = list(
        Price.objects.filter(kind="pool").values_list(
            "subject_id", "subject_name", "effective_from", "gpu_hour", "cpu_core_hour", "memory_gib_hour"
        )
    )
    assert rows == [
        (
            str(priced.pk),
            "gpu-a",
            datetime(2026, 3, 4, 9, tzinfo=UTC),
            Decimal("2.5"),
            Decimal("0.04"),
            Decimal("0"),
        )
    ]

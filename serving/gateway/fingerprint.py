"""Has anything the routing table is read from changed? One query answers it, so that the gateway rebuilds
the table only when something did.

Rebuilding reads a dozen tables through the ORM: about 11 ms of Python with a single endpoint, more with
many, in a worker thread that holds the GIL while the event loop waits. Done every second, that stall lands
on about one request in a hundred: it was the p99 of ``make bench-gateway``. The fingerprint is computed by
PostgreSQL: per table, the row count and the sum of the rows' ``xmin`` (the id of the transaction that
wrote each row version), so an insert, an update or a delete anywhere changes it; plus what changes with the
clock alone: which prices are in force (a price may take effect without a write) and the budget month.
The gateway still rebuilds at least every ``FULL_REFRESH_SECONDS`` (routing.py), in case a table the table
reads is missing below.
"""

from __future__ import annotations

from django.db import connection, models
from django.utils import timezone

# The gateway rebuilds its table at least this often even when the fingerprint has not moved.
FULL_REFRESH_SECONDS = 60.0


def _sources() -> list[type[models.Model]]:
    """Every model the routing table (routing._read_snapshot) reads, directly or through billing."""
    from portfolio.accounts.models import Department, Team
    from portfolio.billing.models import Budget, Price
    from portfolio.registry.models import Model, ModelVersion
    from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute, EndpointShare, Replica

    return [
        Deployment,
        DeploymentAdapter,
        Endpoint,
        EndpointRoute,
        EndpointShare,
        Replica,
        Model,
        ModelVersion,
        Team,
        Department,
        Price,
        Budget,
    ]


def _query() -> str:
    from portfolio.billing.models import Price

    parts = [
        f"(SELECT count(*)::text || ':' || coalesce(sum(xmin::text::bigint), 0)::text "  # noqa: S608 - names from _meta
        f"FROM {connection.ops.quote_name(model._meta.db_table)})"
        for model in _sources()
    ]
    prices = connection.ops.quote_name(Price._meta.db_table)
    parts.append(f"(SELECT count(*)::text FROM {prices} WHERE effective_from <= %s)")  # noqa: S608
    return "SELECT concat_ws(',', " + ", ".join(parts) + ")"


def read() -> str:
    """The fingerprint now: equal to an earlier one only if nothing the routing table reads has changed."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_query(), [now])
        (value,) = cursor.fetchone()
    return f"{value},{now.year}-{now.month}"

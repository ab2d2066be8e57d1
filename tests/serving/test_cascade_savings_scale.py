"""A cascade's savings at a month's traffic: which small answers were kept (no escalation for their request) is
asked as NOT EXISTS, which PostgreSQL runs as one anti join, not as NOT IN, a subplan per small row that,
once the escalations outgrow work_mem, is quadratic (a page timed out at 1M small and 500k escalated rows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from serving import services
from serving.cascade_savings import cascade_savings
from serving.gateway.models import UsageEvent
from serving.models import Endpoint

pytestmark = pytest.mark.django_db

REQUESTS = 3000  # request ids r1 .. r3000: ids of different lengths, as the hop suffix is cut off by length


@pytest.fixture
def cascade(owner, team, deployment):
    for name in ("support", "large"):
        services.create_endpoint(actor=owner, name=name, team=team, routes=[{"deployment": "support-bot"}])
        Price.objects.create(
            kind=PriceKind.ENDPOINT,
            subject_id=str(Endpoint.objects.get(name=name).pk),
            subject_name=name,
            effective_from=datetime(2000, 1, 1, tzinfo=UTC),
            input_per_million=Decimal(1),
            output_per_million=Decimal(10),
        )
    return services.create_endpoint(
        actor=owner,
        name="smart",
        team=team,
        routes=[],
        kind="cascade",
        config={"small": "support", "large": "large", "threshold": -0.5},
    )


def _hops(endpoint: str, hop: int, cost: str, every: int) -> None:
    """One usage row of ``endpoint`` for each request r<g> with g a multiple of ``every``, a minute ago."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {UsageEvent._meta.db_table} (event_id, at, endpoint, via, kind, stream, input_tokens,
                    output_tokens, audio_ms, latency_ms, status, error, cost, deployment, adapter)
                SELECT 'r' || g || %s, %s, %s, 'smart', 'chat', false, 100, 10, 0, 5, 200, '', %s, 'd', ''
                FROM generate_series(1, %s) g WHERE g %% %s = 0""",
            [f"-{hop}", timezone.now() - timedelta(minutes=1), endpoint, Decimal(cost), REQUESTS, every],
        )


def _kept_query(cascade) -> tuple[str, list]:
    """Work out the savings and hand back the query that summed the kept answers' tokens, with its params."""
    queries: list[tuple[str, list]] = []

    def record(execute, sql, params, many, context):
        queries.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        cascade_savings(cascade, timezone.now() - timedelta(hours=1))
    (kept,) = [(sql, params) for sql, params in queries if '"output_tokens"' in sql]
    return kept


def test_the_kept_answers_are_summed_with_an_anti_join_at_any_number_of_requests(cascade):
    _hops("support", 1, "0.001", every=1)
    _hops("large", 2, "0.01", every=3)  # every third request escalated
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageEvent._meta.db_table}")
        sql, params = _kept_query(cascade)
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Anti Join" in plan and "SubPlan" not in plan, plan


def test_the_savings_count_only_the_answers_kept_at_the_large_price(cascade):
    _hops("support", 1, "0.001", every=1)
    _hops("large", 2, "0.01", every=3)
    savings = cascade_savings(cascade, timezone.now() - timedelta(hours=1))
    kept = REQUESTS - REQUESTS // 3
    # Kept answers at the large endpoint's price now: 100 tokens in at 1 and 10 out at 10 a million.
    kept_at_large = kept * (Decimal(100) * 1 + Decimal(10) * 10) / Decimal(1_000_000)
    assert (savings.requests, savings.escalated) == (REQUESTS, REQUESTS // 3)
    assert savings.cost == Decimal("0.001") * REQUESTS + Decimal("0.01") * (REQUESTS // 3)
    assert savings.always_large == Decimal("0.01") * (REQUESTS // 3) + kept_at_large

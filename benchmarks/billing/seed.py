"""The benchmark's organisation and month, written straight into PostgreSQL (bulk rows, one SQL statement
per million events): 20 departments x 10 teams x 10 keys, 50 priced endpoints (half change price mid-month,
half of those at 13:00, so that their day is priced hour by hour),
one replica per endpoint all month, and each team's stored bytes every day."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import connection, transaction

from portfolio.accounts.models import Department, Team
from portfolio.billing import meters, money
from portfolio.billing.choices import ComputeKind, PriceKind
from portfolio.billing.models import ComputeInterval, Price
from serving.gateway.models import ApiKey
from serving.models import Endpoint

DEPARTMENTS, TEAMS_PER_DEPARTMENT, KEYS_PER_TEAM, ENDPOINTS = 20, 10, 10, 50
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class World:
    departments: list[str]  # cost centers
    teams: int
    keys: int
    endpoints: int
    admin: object


@transaction.atomic
def organisation(month: date) -> World:
    if not Department.objects.filter(cost_center="BENCH-00").exists():
        departments = Department.objects.bulk_create(
            Department(name=f"Bench department {d:02}", cost_center=f"BENCH-{d:02}")
            for d in range(DEPARTMENTS)
        )
        teams = Team.objects.bulk_create(
            Team(department=department, name=f"Team {d:02}-{t}", slug=f"bench-{d:02}-{t}")
            for d, department in enumerate(departments)
            for t in range(TEAMS_PER_DEPARTMENT)
        )
        ApiKey.objects.bulk_create(
            ApiKey(team=team, name=f"key {k}", key_id=f"b{n:05}k{k:02}", secret_hash="0" * 64)
            for n, team in enumerate(teams)
            for k in range(KEYS_PER_TEAM)
        )
        endpoints = Endpoint.objects.bulk_create(
            Endpoint(name=f"bench-ep-{e:02}", owner_team=teams[e * 4]) for e in range(ENDPOINTS)
        )
        start, end = money.month_bounds(month)
        for e, endpoint in enumerate(endpoints):
            rates = {
                "input_per_million": Decimal("0.20") + e / Decimal(100),
                "output_per_million": Decimal("0.60"),
            }
            Price.objects.create(kind=PriceKind.ENDPOINT, subject_id=str(endpoint.pk), subject_name=endpoint.name,
                                 effective_from=LONG_AGO, **rates)  # fmt: skip
            if e % 2:
                Price.objects.create(kind=PriceKind.ENDPOINT, subject_id=str(endpoint.pk),
                                     subject_name=endpoint.name, effective_from=start + timedelta(days=15, hours=13 * (e % 4 == 1)),
                                     input_per_million=rates["input_per_million"] * 2,
                                     output_per_million=Decimal("0.90"))  # fmt: skip
        Price.objects.create(kind=PriceKind.POOL, subject_id="1", subject_name="bench-gpu", effective_from=LONG_AGO,
                             gpu_hour=Decimal("2.10"), cpu_core_hour=Decimal("0.03"), memory_gib_hour=Decimal("0.004"))  # fmt: skip
        ComputeInterval.objects.bulk_create(
            ComputeInterval(
                key=f"replica:bench-{e}",
                kind=ComputeKind.REPLICA,
                team_id=endpoint.owner_team_id,
                department_id=teams[e * 4].department_id,
                subject=f"{endpoint.name}-dep",
                pool_id=1,
                pool="bench-gpu",
                gpus=1,
                cpu_cores=8,
                memory_bytes=32 * 2**30,
                started_at=start,
                ended_at=end,
            )  # fmt: skip
            for e, endpoint in enumerate(endpoints)
        )
        for day in range(money.days_in(month)):
            meters.record_storage_day(
                month + timedelta(days=day),
                [
                    (team.pk, team.department_id, "local", (5 + n % 50) * 2**30)
                    for n, team in enumerate(teams)
                ],
            )
    User = get_user_model()
    admin = User.objects.filter(username="bench-admin").first() or User.objects.create_superuser(
        "bench-admin", password=None
    )
    return World(
        departments=list(
            Department.objects.filter(cost_center__startswith="BENCH-").values_list("cost_center", flat=True)
        ),
        teams=Team.objects.filter(slug__startswith="bench-").count(),
        keys=ApiKey.objects.filter(key_id__startswith="b").count(),
        endpoints=Endpoint.objects.filter(name__startswith="bench-ep-").count(),
        admin=admin,
    )


EVENTS_SQL = """
INSERT INTO gateway_usageevent (event_id, at, api_key_id, team_id, department_id, endpoint, deployment,
    endpoint_id, owner_team_id, owner_department_id, model_version_id, adapter, replica_id, kind, stream,
    input_tokens, output_tokens, latency_ms, ttft_ms, status, error, cost)
SELECT 'bench-' || g, %(start)s::timestamptz + (random() * %(seconds)s) * interval '1 second',
    k.id, k.team_id, k.department_id, r.name, r.name || '-dep', r.id, r.owner_team_id, r.owner_department_id,
    NULL, '', NULL, 'chat', false, (50 + random() * 950)::int, (10 + random() * 300)::int,
    (20 + random() * 400)::int, NULL, 200, '', 0
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
JOIN bench_key k ON k.n = g %% %(keys)s
JOIN bench_route r ON r.n = (k.team_n * 3 + (g / %(keys)s) %% 3) %% %(endpoints)s
"""


def events(world: World, count: int, start: datetime, end: datetime) -> None:
    """``count`` events spread at random over ``[start, end)``: each key's team calls three endpoints."""
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE gateway_usageevent, gateway_usagehourly, billing_tokenusage, billing_tokenday"
        )
        cursor.execute(
            """CREATE TEMP TABLE bench_key AS SELECT (row_number() OVER (ORDER BY k.id)) - 1 AS n, k.id, k.team_id,
               t.department_id, dense_rank() OVER (ORDER BY k.team_id) - 1 AS team_n
               FROM gateway_apikey k JOIN accounts_team t ON t.id = k.team_id WHERE k.key_id LIKE 'b%%'"""
        )
        cursor.execute(
            """CREATE TEMP TABLE bench_route AS SELECT (row_number() OVER (ORDER BY e.id)) - 1 AS n, e.id, e.name,
               e.owner_team_id, t.department_id AS owner_department_id
               FROM serving_endpoint e JOIN accounts_team t ON t.id = e.owner_team_id WHERE e.name LIKE 'bench-ep-%%'"""
        )
        cursor.execute(
            "CREATE INDEX ON bench_key (n); CREATE INDEX ON bench_route (n); ANALYZE bench_key, bench_route"
        )
        seconds = (end - start).total_seconds()
        step = 1_000_000
        for first in range(0, count, step):
            began = time.perf_counter()
            cursor.execute(EVENTS_SQL, {"start": start, "seconds": seconds, "first": first,
                                        "last": min(first + step, count) - 1, "keys": world.keys,
                                        "endpoints": world.endpoints})  # fmt: skip
            print(f"events {min(first + step, count):>10,} ({time.perf_counter() - began:.1f} s)", flush=True)
        cursor.execute("ANALYZE gateway_usageevent")
        cursor.execute("DROP TABLE bench_key, bench_route")

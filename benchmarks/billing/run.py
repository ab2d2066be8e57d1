"""Billing at scale: a month of 10 million usage events for 20 departments, 200 teams and 2,000 keys.

    PORTFOLIO_DATA_DIR=.portfolio-bench-billing python -m benchmarks.billing.run [--events 10000000]

Generates the month in PostgreSQL (the gateway's ``gateway_usageevent`` table, as the usage flusher fills
it), runs the product's hourly rollup over it once (which also writes billing's token ledger), then
measures, each against the naive query over the raw events in the same run:

- (a) one department-month statement (``statements.compute``) vs the same token charges priced from the raw
  events (a price lookup per event, grouped per team, endpoint and price);
- (b) the billing page's queries (``GET /billing/`` for an admin, through Django's test client) vs the page's
  figures (spend per department, team and endpoint) summed from the raw events;
- (c) bytes per stored usage event, indexes included (the table's monthly partitions), and what billing
  keeps per event (its hour and day ledgers), which outlive the raw events' retention.

``--reuse`` measures again on the month an earlier run generated, when it holds that many events (the
generation takes most of the run: about half an hour for 10 million on two cores). Its results carry the
full run's date and its generation and rollup seconds forward (from a record the full run leaves in the
data folder, else from the results file it wrote), so that what a statement's ratio leaves out stays in the
file.

Writes ``benchmarks/results/billing.json``. The data folder must be one of its own (its name holds
"bench"): the run empties the usage and ledger tables there first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, date, datetime
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from benchmarks.billing import seed  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from portfolio.accounts.models import Department  # noqa: E402
from portfolio.billing import statements  # noqa: E402
from serving.gateway import usage  # noqa: E402

RESULT = Path(__file__).resolve().parent.parent / "results" / "billing.json"
MONTH_RECORD = "bench-billing-month.json"  # in the data folder, beside the month it describes
MONTH = date(2026, 10, 1)
GOALS = {"statement_s": 1.0, "page_s": 0.3, "bytes_per_event": 500}


def timed(fn, rounds: int = 5) -> tuple[float, object]:
    """Median seconds of ``rounds`` calls (after one warm-up), and the last result."""
    result = fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


NAIVE_STATEMENT = """
SELECT e.team_id, e.endpoint, p.id, sum(e.input_tokens), sum(e.output_tokens)
FROM gateway_usageevent e
LEFT JOIN LATERAL (
    SELECT id FROM billing_price p
    WHERE p.kind = 'endpoint' AND p.subject_id = e.endpoint_id::text AND p.effective_from <= e.at
    ORDER BY p.effective_from DESC LIMIT 1
) p ON true
WHERE e.at >= %s AND e.at < %s AND (e.department_id = %s OR e.owner_department_id = %s)
GROUP BY 1, 2, 3
"""

NAIVE_PAGE = """
SELECT e.department_id, e.team_id, e.endpoint, sum(e.input_tokens * p.input_per_million
       + e.output_tokens * p.output_per_million) / 1000000
FROM gateway_usageevent e
LEFT JOIN LATERAL (
    SELECT input_per_million, output_per_million FROM billing_price p
    WHERE p.kind = 'endpoint' AND p.subject_id = e.endpoint_id::text AND p.effective_from <= e.at
    ORDER BY p.effective_from DESC LIMIT 1
) p ON true
WHERE e.at >= %s AND e.at < %s
GROUP BY 1, 2, 3
"""


def naive(sql: str, params: list):
    def run():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    return run


def sizes(events: int) -> dict:
    with connection.cursor() as cursor:
        # The table is partitioned by month: its size is its partitions'.
        cursor.execute(
            "SELECT sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid)) "
            "FROM pg_partition_tree('gateway_usageevent')"
        )
        total, heap = (int(value) for value in cursor.fetchone())  # sum() is numeric
        cursor.execute(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_partition_tree('gateway_usageevent') p ON p.relid = i.indrelid WHERE p.isleaf"
        )
        by_index: dict[str, int] = {}
        for name, size in cursor.fetchall():
            # Each partition's index is named after its table and columns: group them by columns.
            columns = name.split("_", 3)[-1]
            by_index[columns] = by_index.get(columns, 0) + size
        cursor.execute(
            "SELECT pg_total_relation_size('billing_tokenusage') + pg_total_relation_size('billing_tokenday'), "
            "(SELECT count(*) FROM billing_tokenusage), (SELECT count(*) FROM billing_tokenday)"
        )
        ledger, ledger_rows, day_rows = cursor.fetchone()
    return {
        "usage_event_bytes_total": total,
        "usage_event_bytes_heap": heap,
        "index_bytes": by_index,
        "bytes_per_event": round(total / events, 1),
        "ledger_bytes": ledger,
        "ledger_rows": ledger_rows,
        "ledger_day_rows": day_rows,
        "ledger_bytes_per_event": round(ledger / events, 2),
    }


def earlier_month(events: int) -> dict:
    """When the month being measured again was generated, and how long its generation and rollup took: from
    the data folder's record of the full run, else from the results file it wrote; nulls when neither
    describes a month of ``events`` events."""
    for path in (Path(settings.DATA_DIR) / MONTH_RECORD, RESULT):
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if known.get("events") == events and known.get("generate_s") is not None:
            return {key: known.get(key) for key in ("month_generated_at", "generate_s", "rollup_s")}
    return {"month_generated_at": None, "generate_s": None, "rollup_s": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="measure again on the month the last run generated (same number of events), without generating it",
    )
    options = parser.parse_args()
    if "bench" not in Path(settings.DATA_DIR).name:
        raise SystemExit(
            "Run with PORTFOLIO_DATA_DIR=.portfolio-bench-billing: the run empties usage tables."
        )
    call_command("migrate", verbosity=0)
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)

    began = time.perf_counter()
    world = seed.organisation(MONTH)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM gateway_usageevent")
        reuse = options.reuse and cursor.fetchone()[0] == options.events
    if reuse:
        month = earlier_month(options.events)
    else:
        seed.events(world, options.events, start, end)
        generated = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        usage.rollup(since=start)
        month = {
            "month_generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "generate_s": generated,
            "rollup_s": round(time.perf_counter() - began, 1),
        }
        record = {"events": options.events, **month}
        (Path(settings.DATA_DIR) / MONTH_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    with connection.cursor() as cursor:  # what autovacuum would do soon after such a bulk write
        cursor.execute("ANALYZE billing_tokenusage, billing_tokenday, billing_storageday")

    department = Department.objects.get(cost_center=world.departments[0])
    statement_s, lines = timed(lambda: statements.compute(department, MONTH, end))
    naive_statement_s, _ = timed(naive(NAIVE_STATEMENT, [start, end, department.pk, department.pk]), rounds=3)

    client = Client(HTTP_HOST="localhost")  # one of the default ALLOWED_HOSTS
    client.force_login(world.admin)
    month_param = {"month": MONTH.strftime("%Y-%m")}

    def page():
        response = client.get("/billing/", month_param)
        assert response.status_code == 200, response.status_code
        return response

    page_s, _ = timed(page)
    naive_page_s, _ = timed(naive(NAIVE_PAGE, [start, end]), rounds=3)

    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reused_month": reuse,
        "events": options.events,
        "departments": len(world.departments),
        "teams": world.teams,
        "keys": world.keys,
        "endpoints": world.endpoints,
        # The month's generation and its one rollup (outside every ratio below: the statement and the page
        # read the ledger the rollup wrote); with --reuse, the full run's figures, null when unknown.
        **month,
        "statement": {
            "ours_s": round(statement_s, 4),
            "naive_s": round(naive_statement_s, 4),
            "speedup": round(naive_statement_s / statement_s, 1),
            "lines": len(lines),
            "goal_s": GOALS["statement_s"],
        },
        "page": {
            "ours_s": round(page_s, 4),
            "naive_s": round(naive_page_s, 4),
            "speedup": round(naive_page_s / page_s, 1),
            "goal_s": GOALS["page_s"],
        },
        "storage": {**sizes(options.events), "goal_bytes_per_event": GOALS["bytes_per_event"]},
        "machine": {
            **machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": connection.pg_version,
        },
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""A month's token usage as statements, spend and charts read it: the fewest ledger rows that still price
every call at the endpoint's price in force in its hour.

Prices start on the hour. An endpoint whose price does not change during a day has one price all day,
so its day is read whole from the day ledger (``TokenDay``); an endpoint whose price changes in the
middle of a day (a version starting on that day, not at midnight) has that day read hour by hour from
the hour ledger (``TokenUsage``). Each period starts at ``at`` (a midnight or an hour): the price in
force at ``at`` prices the whole period.

``periods(...)`` gives the SQL of those rows, each with the endpoint's price version in force at its start,
to be used as ``WITH {periods SQL} SELECT ... FROM periods``; the columns are ``at, endpoint_id, endpoint,
deployment, team_id, department_id, owner_team_id, owner_department_id, requests, input_tokens,
output_tokens, audio_ms, price_id, input_per_million, output_per_million, audio_second`` (the last four
null where the endpoint had no price).
"""

from __future__ import annotations

from datetime import datetime

from portfolio.billing.choices import PriceKind
from portfolio.billing.pricing import PriceBook

COLUMNS = (
    "endpoint_id, endpoint, deployment, team_id, department_id, owner_team_id, owner_department_id, "
    "requests, input_tokens, output_tokens, audio_ms"
)

PERIODS = """
versions AS (
    SELECT id, subject_id, effective_from, input_per_million, output_per_million, audio_second,
           lead(effective_from) OVER (PARTITION BY subject_id ORDER BY effective_from) AS until
    FROM billing_price WHERE kind = 'endpoint'
),
usage AS (
SELECT d.day AS at, {d_columns} FROM billing_tokenday d
WHERE d.day >= %s AND d.day < %s {d_scope}
  AND NOT EXISTS (SELECT 1 FROM unnest(%s::bigint[], %s::timestamptz[]) s(endpoint_id, day)
                  WHERE s.endpoint_id = d.endpoint_id AND s.day = d.day)
UNION ALL
SELECT t.hour, {t_columns} FROM unnest(%s::bigint[], %s::timestamptz[]) s(endpoint_id, day)
CROSS JOIN LATERAL (  -- each split day by the (endpoint_id, hour) index, never a scan of the month's hours
    SELECT * FROM billing_tokenusage t
    WHERE t.endpoint_id = s.endpoint_id AND t.hour >= s.day AND t.hour < s.day + interval '1 day'
      AND t.hour >= %s AND t.hour < %s {t_scope}
    OFFSET 0  -- kept a subquery per split day (not flattened into a join over the whole month)
) t
),
periods AS (
    SELECT u.*, v.id AS price_id, v.input_per_million, v.output_per_million, v.audio_second
    FROM usage u
    LEFT JOIN versions v ON v.subject_id = u.endpoint_id::text AND v.effective_from <= u.at
         AND (v.until IS NULL OR u.at < v.until)
)
"""


def split_days(book: PriceBook, start: datetime, end: datetime) -> tuple[list[int], list[datetime]]:
    """(endpoint ids, midnights) of the days in ``[start, end)`` on which an endpoint's price changes
    after midnight: those days are read by the hour."""
    endpoints, days = [], []
    seen = set()
    for subject_id, effective_from in sorted(book.starts(PriceKind.ENDPOINT, start, end)):
        midnight = effective_from.replace(hour=0, minute=0, second=0, microsecond=0)
        if effective_from == midnight or not subject_id.isdigit() or (subject_id, midnight) in seen:
            continue
        seen.add((subject_id, midnight))
        endpoints.append(int(subject_id))
        days.append(midnight)
    return endpoints, days


def periods(departments, book: PriceBook, start: datetime, end: datetime) -> tuple[str, list]:
    """The SQL and parameters of the periods of ``[start, end)`` (midnights, UTC) of the calls made by, or
    made to endpoints owned by, ``departments`` (None: all); ``book`` holds the endpoints' prices."""
    endpoints, days = split_days(book, start, end)
    scope: dict[str, str] = {"d_scope": "", "t_scope": ""}
    extra: list = []
    if departments is not None:
        ids = list(departments)
        scope = {
            "d_scope": "AND (d.department_id = ANY(%s) OR d.owner_department_id = ANY(%s))",
            "t_scope": "AND (t.department_id = ANY(%s) OR t.owner_department_id = ANY(%s))",
        }
        extra = [ids, ids]
    sql = PERIODS.format(
        d_columns=", ".join(f"d.{c.strip()}" for c in COLUMNS.split(",")),
        t_columns=", ".join(f"t.{c.strip()}" for c in COLUMNS.split(",")),
        **scope,
    )
    params = [start, end, *extra, endpoints, days, endpoints, days, start, end, *extra]
    return sql, params

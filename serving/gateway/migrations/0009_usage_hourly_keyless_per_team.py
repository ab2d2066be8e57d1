"""The hourly rollups of calls without a key (the prompt box's) are rebuilt per team from the raw events.

Before 0008 the rollup grouped them across teams, one row per hour, endpoint and via under the highest team's
id (max(team_id)): that team saw every team's prompt-box calls, endpoints and tokens on its usage page and in
GET /usage, for as long as rollups are kept. 0008 changed only the unique key, and nothing recomputed the
hours before it. Here the key-less rows of each hour whose key-less raw events are still stored are deleted
and inserted again, grouped as the rollup groups them now (ROLLUP_SQL in serving/gateway/usage.py, copied
here so that later changes to it do not change what this migration did).

An hour whose raw events retention has dropped cannot be rebuilt, and its rows stay as they are; so do those
of an hour with fewer key-less raw events than its rows count (its month dropped, then a late event of it
stored), which rebuilt from what is left would lose calls. Rows of keyed calls were right already: a key is
one team's.

The rollup's advisory lock (usage.ROLLUP_LOCK_ID) is taken first: workers keep rolling up during a deploy,
and a rollup writing the same hours meanwhile would clash with the inserts. Reversed, it does nothing: the
rebuilt rows are right under 0008's schema too, and the mixed rows cannot be made again.
"""

from django.db import migrations

REBUILD = """
SELECT pg_advisory_xact_lock(1970495847);
CREATE TEMPORARY TABLE usage_keyless_hours ON COMMIT DROP AS
SELECT raw.hour FROM (
    SELECT date_trunc('hour', at) AS hour, count(*) AS requests FROM gateway_usageevent
    WHERE api_key_id IS NULL GROUP BY 1
) raw LEFT JOIN (
    SELECT hour, sum(requests) AS requests FROM gateway_usagehourly WHERE api_key_id IS NULL GROUP BY 1
) rolled ON rolled.hour = raw.hour
WHERE raw.requests >= COALESCE(rolled.requests, 0);
DELETE FROM gateway_usagehourly
WHERE api_key_id IS NULL AND hour IN (SELECT hour FROM usage_keyless_hours);
INSERT INTO gateway_usagehourly (hour, api_key_id, team_id, department_id, endpoint, via, requests, errors,
    input_tokens, output_tokens, audio_ms, latency_ms_sum, latency_p50_ms, latency_p95_ms, cost)
SELECT date_trunc('hour', at) AS hour, api_key_id, team_id, max(department_id), endpoint, via, count(*),
    count(*) FILTER (WHERE status >= 400), sum(input_tokens), sum(output_tokens), sum(audio_ms), sum(latency_ms),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
    sum(cost)
FROM gateway_usageevent
WHERE api_key_id IS NULL AND date_trunc('hour', at) IN (SELECT hour FROM usage_keyless_hours)
GROUP BY 1, api_key_id, team_id, endpoint, via;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("gateway", "0008_usage_hourly_per_team"),
    ]

    operations = [
        migrations.RunSQL(REBUILD, reverse_sql=migrations.RunSQL.noop),
    ]

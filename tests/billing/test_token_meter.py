"""The token meter: the gateway's usage events, flushed and rolled up, become billing's hourly ledger rows
(per hour, endpoint, deployment and calling team), with the endpoint's owners beside the caller; a late
event recomputes its hour, a redelivered one is counted once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from portfolio.accounts.models import Team
from portfolio.billing.models import TokenUsage
from serving.gateway import events, keystate, payloads, usage
from serving.gateway import services as key_services
from serving.gateway.events import USAGE_STREAM, Outcome
from serving.gateway.keycache import KeyRecord
from serving.gateway.models import UsageEvent
from serving.gateway.routing import EndpointInfo
from tests.conftest import actor_for
from tests.gateway.key_records import key_record

pytestmark = pytest.mark.django_db

ENDPOINT_ID = 41


def _send(key, caller: Team, owner: Team, event_id: str, at: datetime, tokens_in: int, tokens_out: int):
    """An event as the gateway writes it to the usage stream: ``caller`` called ``owner``'s endpoint."""
    event = {
        "id": event_id,
        "at": at.timestamp(),
        "key": key.pk,
        "team": caller.pk,
        "department": caller.department_id,
        "endpoint": "shared-router",
        "endpoint_id": ENDPOINT_ID,
        "owner_team": owner.pk,
        "owner_department": owner.department_id,
        "deployment": "router-a",
        "adapter": "",
        "version": None,
        "replica": None,
        "kind": "chat",
        "stream": 0,
        "in": tokens_in,
        "out": tokens_out,
        "latency_ms": 40,
        "ttft_ms": None,
        "status": 200,
        "error": "",
        "cost_micros": 0,
    }
    keystate.client().xadd(USAGE_STREAM, {"e": orjson.dumps(event)})


def _ledger() -> dict:
    return {
        (row.hour, row.team_id): (
            row.endpoint_id,
            row.owner_team_id,
            row.owner_department_id,
            row.department_id,
            row.requests,
            row.input_tokens,
            row.output_tokens,
        )
        for row in TokenUsage.objects.filter(endpoint="shared-router", deployment="router-a")
    }


def test_flushed_and_rolled_up_events_become_exactly_the_ledger_rows_late_and_redelivered_ones_included(
    org, team, other_team
):
    owner_key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="own")
    caller_key, _ = key_services.create_key(actor=actor_for(org["outsider"]), team=other_team, name="call")
    now_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    recent, earlier = now_hour - timedelta(hours=3), now_hour - timedelta(hours=30)

    _send(owner_key, team, team, "own-1", recent + timedelta(minutes=5), 100, 10)
    _send(caller_key, other_team, team, "call-1", recent + timedelta(minutes=6), 7, 3)
    _send(caller_key, other_team, team, "call-2", recent + timedelta(minutes=59), 13, 2)
    assert usage.flush() == 3
    usage.rollup()
    assert _ledger() == {
        (recent, team.pk): (ENDPOINT_ID, team.pk, team.department_id, team.department_id, 1, 100, 10),
        (recent, other_team.pk): (
            ENDPOINT_ID,
            team.pk,
            team.department_id,
            other_team.department_id,
            2,
            20,
            5,
        ),
    }

    # A late event for an hour long past, one for the recent hour, and a redelivery of an event stored before.
    _send(caller_key, other_team, team, "late-1", earlier + timedelta(minutes=30), 50, 50)
    _send(caller_key, other_team, team, "late-2", recent + timedelta(minutes=30), 1, 1)
    _send(caller_key, other_team, team, "call-1", recent + timedelta(minutes=6), 7, 3)
    assert usage.flush() == 3
    usage.rollup()
    usage.rollup()  # another run changes nothing: the ledger rows are sums, not increments
    assert UsageEvent.objects.count() == 5, "the redelivered event is stored once"
    assert _ledger() == {
        (recent, team.pk): (ENDPOINT_ID, team.pk, team.department_id, team.department_id, 1, 100, 10),
        (recent, other_team.pk): (
            ENDPOINT_ID,
            team.pk,
            team.department_id,
            other_team.department_id,
            3,
            21,
            6,
        ),
        (earlier, other_team.pk): (
            ENDPOINT_ID,
            team.pk,
            team.department_id,
            other_team.department_id,
            1,
            50,
            50,
        ),
    }


def test_a_rollup_since_a_time_rewrites_the_ledger_from_then_on(org, team):
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    hour = datetime(2026, 11, 23, 9, tzinfo=UTC)
    _send(key, team, team, "e1", hour + timedelta(minutes=1), 4, 2)
    _send(key, team, team, "e2", hour + timedelta(hours=1, minutes=1), 6, 3)
    usage.flush()
    TokenUsage.objects.create(hour=hour, endpoint="shared-router", deployment="router-a", team_id=team.pk)
    usage.rollup(since=hour)
    usage.rollup(since=hour)
    assert {(h, t): v[4:] for (h, t), v in _ledger().items()} == {
        (hour, team.pk): (1, 4, 2),
        (hour + timedelta(hours=1), team.pk): (1, 6, 3),
    }


def _key(team: Team) -> KeyRecord:
    return key_record(key_id="k" * 12, team_id=team.pk, team=team.slug, department_id=team.department_id)


def _endpoint(name: str, team: Team, endpoint_id: int | None, department_id: int | None) -> EndpointInfo:
    return EndpointInfo(
        name=name,
        team_id=team.pk,
        routes=(),
        fallback=None,
        input_micros_per_token=0.0,
        output_micros_per_token=0.0,
        max_model_len=2048,
        id=endpoint_id,
        department_id=department_id,
    )


def test_a_usage_event_names_the_endpoint_that_answered_and_its_owners(team, other_team):
    first = _endpoint("first", other_team, 7, other_team.department_id)
    fallback = _endpoint("fallback", team, 8, team.department_id)
    outcome = Outcome(
        endpoint="first", kind="chat", shape=payloads.Shape((10,), 1, 10), event_id="x", first=first
    )
    lost = events.usage_event(_key(team), outcome, 0.0, 0, lost=True)
    assert (lost["endpoint_id"], lost["owner_team"], lost["owner_department"]) == (
        7,
        other_team.pk,
        other_team.department_id,
    )
    outcome.answered, outcome.endpoint = fallback, "fallback"
    answered = events.usage_event(_key(team), outcome, 0.1, 0)
    assert (answered["endpoint_id"], answered["owner_team"], answered["owner_department"]) == (
        8,
        team.pk,
        team.department_id,
    )


def test_a_playground_call_is_owned_by_the_callers_own_team(team):
    box = _endpoint("playground", team, None, None)
    outcome = Outcome(
        endpoint="playground", kind="chat", shape=payloads.Shape((1,), 1, 1), event_id="y", first=box
    )
    event = events.usage_event(_key(team), outcome, 0.0, 0)
    assert (event["endpoint_id"], event["owner_team"], event["owner_department"]) == (
        None,
        team.pk,
        team.department_id,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "since"])
def test_two_rollups_at_once_leave_a_day_s_rows_once(team, monkeypatch, periodic):
    """Beat queues a rollup a minute and busy workers may start several together: the second one must not
    write a day's rows beside the first one's (its DELETE cannot see rows the first has not committed)."""
    from django.db import connection

    from portfolio.billing import meters
    from portfolio.billing.models import TokenDay

    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    # A quiet day: no events, one hour already in the ledger, outside the recomputed hours but in their day.
    TokenUsage.objects.create(
        hour=day + timedelta(hours=5),
        endpoint="shared-router",
        deployment="router-a",
        team_id=team.pk,
        requests=9,
    )
    if periodic:
        usage._mark_hours(keystate.client(), {int((day + timedelta(hours=12)).timestamp())})
    written, release = threading.Event(), threading.Event()
    real = meters._rewrite_days

    def rewrite_days(start, end):
        real(start, end)
        if (
            threading.current_thread() is holder
            and start >= day + timedelta(hours=12)
            and start < day + timedelta(days=1)
        ):
            written.set()  # the first rollup has rewritten the day and holds its transaction open
            release.wait(10)

    monkeypatch.setattr(meters, "_rewrite_days", rewrite_days)
    failures: list[BaseException] = []

    def run_rollup() -> None:
        try:
            usage.rollup() if periodic else usage.rollup(since=day + timedelta(hours=12))
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=run_rollup)
    holder.start()
    assert written.wait(10)
    other = threading.Thread(target=run_rollup)
    other.start()
    deadline = time.monotonic() + 10
    while other.is_alive() and time.monotonic() < deadline:  # until it finished, or waits on the first
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                break
        time.sleep(0.02)
    release.set()
    holder.join(10)
    other.join(10)
    assert failures == []
    rows = list(TokenDay.objects.filter(day=day).values_list("endpoint", "team_id", "requests"))
    assert rows == [("shared-router", team.pk, 9)]

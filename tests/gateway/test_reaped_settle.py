"""A request whose in-flight ledger was reaped (its gateway cut off from Redis past ALIVE_SECONDS) and that
then settles: its reservation was given back by the reaper, so settling adds its actual usage, and its real
usage event replaces the lost one (serving/gateway/limits.py, inflight.py, usage.py). Real Redis and
PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import orjson
import pytest
from django.conf import settings

from serving.gateway import hop_ids, inflight, keystate, limits, redis_pipe, usage
from serving.gateway import services as key_services
from serving.gateway.events import USAGE_STREAM, Outcome, usage_event
from serving.gateway.limits import Limiter
from serving.gateway.models import UsageEvent, UsageHourly
from serving.gateway.payloads import Shape
from tests.conftest import actor_for
from tests.gateway.key_records import key_record

pytestmark = pytest.mark.django_db


async def admit(record, outcome: Outcome, process: str, at: float | None = None):
    """Admit with an entry in ``process``'s ledger (its lost event at ``at``, if given); the reservation."""
    lost_event = usage_event(record, outcome, 0.0, 0, lost=True)
    lost_event["at"] = at or lost_event["at"]
    pipe = redis_pipe.connect(settings.REDIS_URL)
    try:
        verdict = await Limiter(pipe).admit(
            record,
            tokens=500,
            money_micros=0,
            revoked_set=f"test:revoked:{uuid.uuid4().hex}",
            ledger=inflight.ledger_key(process),
            lost_event=lost_event,
        )
        assert verdict.ok
        return verdict.reservation
    finally:
        await pipe.close()


async def settle(record, reservation, *outcomes: Outcome) -> None:
    """As the gateway settles: the settlement and the usage events (a composite's: one a hop) in one
    pipeline."""
    pipe = redis_pipe.connect(settings.REDIS_URL)
    try:
        commands = Limiter(pipe).settle(reservation, tokens=42, money_micros=0)
        for outcome in outcomes:
            event = usage_event(record, outcome, 0.5, 0)
            commands.append(("XADD", USAGE_STREAM, "*", "e", orjson.dumps(event)))
        replies = await pipe.execute(*commands)
        if limits.unknown_script(replies[0]):
            replies[0:1] = await pipe.execute(limits.as_eval(commands[0]))
        assert not any(isinstance(reply, Exception) for reply in replies), replies
    finally:
        await pipe.close()


def flush_all() -> None:
    while usage.flush() > 0:
        pass


def counter(record, kind: str) -> int:
    client = keystate.client()
    return sum(int(client.get(name) or 0) for name in client.scan_iter(f"gw:{kind}:{record.key_id}:*"))


@pytest.mark.parametrize("flush_between", [False, True], ids=["lost-in-same-batch", "lost-stored-first"])
def test_a_request_settled_after_its_ledger_was_reaped_counts_its_actual_usage_once(org, team, flush_between):
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    record = key_record(
        pk=key.pk,
        team_id=team.pk,
        department_id=team.department_id,
        tpm_limit=10_000,
        monthly_token_budget=100_000,
    )
    event_id = uuid.uuid4().hex
    outcome = Outcome(
        endpoint="e", kind="chat", shape=Shape(prompts=(1,), choices=1, per_choice=1), event_id=event_id
    )
    process = f"test-{uuid.uuid4().hex}"
    reservation = asyncio.run(admit(record, outcome, process))
    client = keystate.client()
    client.sadd(inflight.PROCESSES, process)  # registered, its liveness expired: reaped as the flusher does
    assert inflight.reap(client, USAGE_STREAM) >= 1
    assert counter(record, "tpm") == 0, "the reaper gave the reservation back"
    if flush_between:
        flush_all()
    outcome.status, outcome.input_tokens, outcome.output_tokens = 200, 30, 12
    asyncio.run(settle(record, reservation, outcome))
    assert (counter(record, "tpm"), counter(record, "bt")) == (42, 42), "the actual tokens, once"
    flush_all()
    stored = list(UsageEvent.objects.filter(event_id=event_id).values_list("status", "error", "input_tokens"))
    assert stored == [(200, "", 30)], "the real usage is stored, the lost event not"


def test_the_hourly_rollup_keeps_no_row_of_a_lost_event_its_real_one_replaced(org, team):
    """The real event answered by another endpoint (a fallback) than the lost one named: the rollup rebuilt
    the hour's groups that still had events, and the lost event's group kept its row (2 requests, 1 error)."""
    from datetime import UTC, datetime, timedelta

    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    record = key_record(pk=key.pk, team_id=team.pk, department_id=team.department_id)
    outcome = Outcome(endpoint="first", kind="chat", shape=Shape(prompts=(1,), choices=1, per_choice=1),
                      event_id=uuid.uuid4().hex)  # fmt: skip
    process = f"test-{uuid.uuid4().hex}"
    reservation = asyncio.run(admit(record, outcome, process))
    client = keystate.client()
    client.sadd(inflight.PROCESSES, process)
    inflight.reap(client, USAGE_STREAM)
    flush_all()
    since = datetime.now(UTC) - timedelta(hours=2)
    usage.rollup(since=since)
    outcome.endpoint, outcome.status, outcome.input_tokens = "fallback", 200, 30
    asyncio.run(settle(record, reservation, outcome))
    flush_all()
    usage.rollup(since=since)
    rows = UsageHourly.objects.filter(api_key_id=key.pk)
    assert [(r.endpoint, r.requests, r.errors) for r in rows] == [("fallback", 1, 0)]


@pytest.mark.django_db(transaction=True)
def test_two_flushes_at_once_one_with_the_lost_event_one_with_the_real_one_store_only_the_real_one(
    org, team, monkeypatch
):
    """Each flush decided which event wins before the other's rows were committed: both were kept."""
    import threading

    from django.db import connection

    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    record = key_record(pk=key.pk, team_id=team.pk, department_id=team.department_id)
    event_id = uuid.uuid4().hex
    outcome = Outcome(endpoint="e", kind="chat", shape=Shape(prompts=(1,), choices=1, per_choice=1),
                      event_id=event_id)  # fmt: skip
    process = f"test-{uuid.uuid4().hex}"
    reservation = asyncio.run(admit(record, outcome, process))
    client = keystate.client()
    client.sadd(inflight.PROCESSES, process)
    inflight.reap(client, USAGE_STREAM)  # the lost event is on the stream
    outcome.status, outcome.input_tokens = 200, 30
    asyncio.run(settle(record, reservation, outcome))  # and then the real one
    both_read, real_insert = threading.Barrier(2), usage._insert  # noqa: SLF001

    def insert_when_both_have_read(events):
        # Without a lock between them, both get here before either commits; with it, the other flush waits
        # for this one's transaction and the barrier gives up.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait(timeout=3)
        real_insert(events)

    monkeypatch.setattr(usage, "_insert", insert_when_both_have_read)

    def flush_one(consumer: str) -> None:
        try:
            usage.flush(batch=1, consumer=consumer)
        finally:
            connection.close()

    flushers = [threading.Thread(target=flush_one, args=(name,)) for name in ("one", "two")]
    for flusher in flushers:
        flusher.start()
    for flusher in flushers:
        flusher.join(20)
    stored = list(UsageEvent.objects.filter(event_id=event_id).values_list("status", "error"))
    assert stored == [(200, "")]


@pytest.mark.parametrize("order", ["lost-in-same-batch", "lost-stored-first", "hops-stored-first"])
def test_a_composite_request_settled_after_its_ledger_was_reaped_keeps_its_hops_and_not_the_lost_event(
    org, team, order
):
    """The lost event has the request's id and the real ones its hops' (``<id>-1``, ...): the lost one was
    kept beside them, one more request and error in the rollups and on the bill."""
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    record = key_record(pk=key.pk, team_id=team.pk, department_id=team.department_id)
    event_id = uuid.uuid4().hex
    shape = Shape(prompts=(1,), choices=1, per_choice=1)
    whole = Outcome(endpoint="router", kind="chat", shape=shape, event_id=event_id)
    process = f"test-{uuid.uuid4().hex}"
    reservation = asyncio.run(admit(record, whole, process))
    client = keystate.client()
    client.sadd(inflight.PROCESSES, process)
    # Hops first: the lost event is reaped onto another stream and put on the flushed one after them, as a
    # flusher's claim of an entry a dead one held delivers it.
    aside = f"test:reaped:{uuid.uuid4().hex}"
    assert inflight.reap(client, aside if order == "hops-stored-first" else USAGE_STREAM) >= 1
    if order == "lost-stored-first":
        flush_all()
    hops = []
    for hop, endpoint in enumerate(("classifier", "specialist"), start=1):
        hops.append(
            Outcome(endpoint=endpoint, kind="chat", shape=shape, event_id=hop_ids.of_hop(event_id, hop))
        )
        hops[-1].via, hops[-1].status, hops[-1].input_tokens = "router", 200, 10
    asyncio.run(settle(record, reservation, *hops))
    if order == "hops-stored-first":
        flush_all()
        for _entry_id, fields in client.xrange(aside) or []:
            client.xadd(USAGE_STREAM, {"e": (fields or {})[b"e"]})
        client.delete(aside)
    flush_all()
    stored = UsageEvent.objects.filter(event_id__startswith=event_id).order_by("event_id")
    assert list(stored.values_list("event_id", "status", "error")) == [
        (hop_ids.of_hop(event_id, 1), 200, ""),
        (hop_ids.of_hop(event_id, 2), 200, ""),
    ]


def test_the_lost_events_hour_is_rolled_up_again_when_the_flusher_that_replaced_it_died_before_marking(
    org, team, monkeypatch
):
    """The flusher died between its commit (the lost event deleted) and marking the hours: the redelivered
    real event found nothing to delete, so no mark, and the lost event's hour kept its request and error."""
    from datetime import UTC, datetime

    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    record = key_record(pk=key.pk, team_id=team.pk, department_id=team.department_id)
    outcome = Outcome(endpoint="e", kind="chat", shape=Shape(prompts=(1,), choices=1, per_choice=1),
                      event_id=uuid.uuid4().hex)  # fmt: skip
    admitted = time.time() - 5 * 3600  # a long request: its lost event hours before its real one
    lost_hour = datetime.fromtimestamp(usage._hour_of(datetime.fromtimestamp(admitted, UTC)), UTC)  # noqa: SLF001
    process = f"test-{uuid.uuid4().hex}"
    reservation = asyncio.run(admit(record, outcome, process, at=admitted))
    client = keystate.client()
    client.sadd(inflight.PROCESSES, process)
    inflight.reap(client, USAGE_STREAM)
    flush_all()
    usage.rollup()  # the lost event's hour, marked, is rolled up and its mark cleared
    hourly = UsageHourly.objects.filter(api_key_id=key.pk, hour=lost_hour)
    assert list(hourly.values_list("requests", "errors")) == [(1, 1)]
    outcome.status, outcome.input_tokens = 200, 30
    asyncio.run(settle(record, reservation, outcome))

    def killed(*_args):
        raise RuntimeError("the flusher is killed after its commit")

    with monkeypatch.context() as patched:
        patched.setattr(usage, "_mark_hours", killed)
        with pytest.raises(RuntimeError):
            usage.flush()
    monkeypatch.setattr(usage, "CLAIM_IDLE_MS", 0)  # the next run claims the dead flusher's entries at once
    flush_all()
    usage.rollup()
    assert list(hourly.values_list("requests", "errors")) == []


def test_the_flusher_forgets_requests_reaped_over_a_day_ago_though_no_process_is_reaped(org, team):
    """REAPED was trimmed only when a dead process was reaped: without one, every flush read it all (and
    took the replacing lock) for as long."""
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    record = key_record(pk=key.pk, team_id=team.pk, department_id=team.department_id)
    old, recent = uuid.uuid4().hex, uuid.uuid4().hex
    client = keystate.client()
    client.zadd(inflight.REAPED, {old: time.time() - inflight.REAPED_SECONDS - 60, recent: time.time()})
    outcome = Outcome(endpoint="e", kind="chat", shape=Shape(prompts=(1,), choices=1, per_choice=1),
                      event_id=uuid.uuid4().hex)  # fmt: skip
    outcome.status = 200
    client.xadd(USAGE_STREAM, {"e": orjson.dumps(usage_event(record, outcome, 0.5, 0))})
    flush_all()
    assert (client.zscore(inflight.REAPED, old), client.zscore(inflight.REAPED, recent) is not None) == (
        None,
        True,
    )

"""A request whose in-flight ledger was reaped (its gateway cut off from Redis past ALIVE_SECONDS) and that
then settles: its reservation was given back by the reaper, so settling adds its actual usage, and its real
usage event replaces the lost one (serving/gateway/limits.py, inflight.py, usage.py). Real Redis and
PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from django.conf import settings

from serving.gateway import inflight, keystate, limits, redis_pipe, usage
from serving.gateway import services as key_services
from serving.gateway.events import USAGE_STREAM, Outcome, usage_event
from serving.gateway.limits import Limiter
from serving.gateway.models import UsageEvent
from serving.gateway.payloads import Shape
from tests.conftest import actor_for
from tests.gateway.key_records import key_record

pytestmark = pytest.mark.django_db


async def admit(record, outcome: Outcome, process: str):
    """Admit with an entry in ``process``'s ledger; the reservation."""
    pipe = redis_pipe.connect(settings.REDIS_URL)
    try:
        verdict = await Limiter(pipe).admit(
            record,
            tokens=500,
            money_micros=0,
            revoked_set=f"test:revoked:{uuid.uuid4().hex}",
            ledger=inflight.ledger_key(process),
            lost_event=usage_event(record, outcome, 0.0, 0, lost=True),
        )
        assert verdict.ok
        return verdict.reservation
    finally:
        await pipe.close()


async def settle(record, outcome: Outcome, reservation) -> None:
    """As the gateway settles: the settlement and the usage event in one pipeline."""
    pipe = redis_pipe.connect(settings.REDIS_URL)
    try:
        commands = Limiter(pipe).settle(reservation, tokens=42, money_micros=0)
        commands.append(("XADD", USAGE_STREAM, "*", "e", orjson.dumps(usage_event(record, outcome, 0.5, 0))))
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
    asyncio.run(settle(record, outcome, reservation))
    assert (counter(record, "tpm"), counter(record, "bt")) == (42, 42), "the actual tokens, once"
    flush_all()
    stored = list(UsageEvent.objects.filter(event_id=event_id).values_list("status", "error", "input_tokens"))
    assert stored == [(200, "", 30)], "the real usage is stored, the lost event not"

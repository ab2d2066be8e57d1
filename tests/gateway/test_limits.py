"""The key's own limits in the admission script (serving/gateway/limits.py), run on the real Redis the
gateway uses: a refusal leaves every counter as it found it, counters expire with their minute or month,
and admission costs six Redis commands a request with every limit set."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid

import redis
from django.conf import settings

from serving.gateway import redis_pipe
from serving.gateway.limits import Limiter, SpendCaps
from tests.gateway.conftest import same_minute
from tests.gateway.key_records import key_record

LIMITED = {
    "rpm_limit": 100,
    "tpm_limit": 50,
    "monthly_token_budget": 1_000,
    "monthly_budget_micros": 1_000_000,
}


def admit(key, times: int, tokens: int = 10, money: int = 1_000, caps: SpendCaps | None = None) -> list:
    async def go():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            limiter = Limiter(pipe)
            revoked = f"test:revoked:{uuid.uuid4().hex}"
            return [
                await limiter.admit(key, tokens=tokens, money_micros=money, revoked_set=revoked, caps=caps)
                for _ in range(times)
            ]
        finally:
            await pipe.close()

    return asyncio.run(go())


def counters(kid: str) -> dict[str, tuple[int, int]]:
    """The key's counters: {kind: (value, seconds to live)}."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    found = {}
    for name in client.scan_iter(f"gw:*:{kid}:*"):
        kind = name.decode().split(":")[1]
        found[kind] = (int(client.get(name) or 0), client.ttl(name))
    return found


def test_a_refusal_gives_back_what_the_same_call_reserved_before_it():
    key = key_record(**LIMITED)
    same_minute()
    verdicts = admit(key, 6)  # 10 tokens each against a tpm of 50: the sixth is one too many
    assert [v.ok for v in verdicts] == [True] * 5 + [False]
    assert (verdicts[-1].reason, verdicts[-1].remaining) == ("tpm", 0)
    found = counters(key.key_id)
    # The refused call counted neither a request nor anything after the limit that refused it.
    assert {kind: value for kind, (value, _) in found.items()} == {"rpm": 5, "tpm": 50, "bt": 50, "bm": 5_000}


def test_the_first_limit_passed_is_the_reason_given():
    key = key_record(**{**LIMITED, "tpm_limit": None, "monthly_token_budget": 25})
    same_minute()  # the two requests admitted counted in one minute's counter
    verdicts = admit(key, 3)
    assert [(v.ok, v.reason, v.remaining) for v in verdicts] == [(True, "", 0)] * 2 + [(False, "budget", 5)]
    assert counters(key.key_id)["rpm"][0] == 2


def test_counters_expire_with_their_minute_or_month_once_created():
    key = key_record(**LIMITED)
    admit(key, 3)
    found = counters(key.key_id)
    assert set(found) == {"rpm", "tpm", "bt", "bm"}
    for kind in ("rpm", "tpm"):
        assert 0 < found[kind][1] <= 61, (kind, found[kind])
    for kind in ("bt", "bm"):
        assert 86_400 < found[kind][1] <= 32 * 86_400, (kind, found[kind])


def test_admission_with_every_limit_set_is_six_redis_commands():
    """What the script runs for one request once its counters exist: the revocation check, one INCRBY per
    limit and the in-flight entry; no read before each add and no time to live set again."""
    key = key_record(**LIMITED)
    same_minute()  # a new minute's counters would be created again, not added to
    admit(key, 1)  # creates the counters (and sets their time to live)
    seen: list[str] = []
    client = redis.Redis.from_url(settings.REDIS_URL)
    ready = threading.Event()

    def watch():
        with client.monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                command = entry["command"]
                if "stop-watching" in command:
                    return
                # Commands of this key's script (the revoked set is per call, the counters per key).
                if key.key_id in command or "test:revoked" in command:
                    seen.append(command.split()[0].upper())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)

    async def one():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            verdict = await Limiter(pipe).admit(
                key,
                tokens=10,
                money_micros=1_000,
                revoked_set=f"test:revoked:{uuid.uuid4().hex}",
                ledger=f"gw:inflight:test-{key.key_id}",
                lost_event={"id": f"{key.key_id}-1", "key": key.key_id},
            )
            assert verdict.ok
        finally:
            await pipe.close()

    asyncio.run(one())
    redis.Redis.from_url(settings.REDIS_URL).get("stop-watching")
    watcher.join(10)
    inside = [command for command in seen if not re.match(r"EVAL(SHA)?$", command)]
    assert sorted(inside) == sorted(["ZSCORE", "INCRBY", "INCRBY", "INCRBY", "INCRBY", "HSET"]), seen

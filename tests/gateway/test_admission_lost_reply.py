"""An admission whose reply is lost (the connection dropped after Redis ran the script, or the reply came
later than the pipe's watchdog waits) used to keep what it reserved: the key's monthly counters and the
request's in-flight entry held it until the gateway process ended, and the in-flight reaper then billed a
request that was never forwarded."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis as redis_client
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeoutError

from serving.gateway import redis_pipe
from serving.gateway.limits import Limiter
from tests.gateway.key_records import key_record


class LosesTheAdmitReply:
    """A pipe that sends every command to Redis, and loses the reply of the first admission it sends."""

    def __init__(self, pipe):
        self.pipe, self.lost = pipe, False

    async def execute(self, *commands):
        replies = await self.pipe.execute(*commands)
        if not self.lost and commands[0][0] in ("EVALSHA", "EVAL") and len(commands[0]) > 20:
            self.lost = True
            raise RedisTimeoutError("the reply came later than the watchdog waits")
        return replies


@pytest.mark.parametrize("reply_lost", [True, False], ids=["reply-lost", "reply-received"])
def test_an_admission_whose_reply_is_lost_gives_its_reservation_back(reply_lost):
    direct = redis_client.Redis.from_url(settings.REDIS_URL)
    record = key_record(monthly_token_budget=1_000_000)
    ledger = f"test:ledger:{uuid.uuid4().hex}"
    event = {"id": uuid.uuid4().hex, "key": record.pk}

    async def main():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            limiter = Limiter(LosesTheAdmitReply(pipe) if reply_lost else pipe)
            return await limiter.admit(
                record,
                tokens=5_000,
                money_micros=0,
                revoked_set=f"test:revoked:{uuid.uuid4().hex}",
                ledger=ledger,
                lost_event=event,
            )
        finally:
            await pipe.close()

    if reply_lost:
        with pytest.raises(RedisTimeoutError):
            asyncio.run(main())
    else:
        assert asyncio.run(main()).ok
    [counter] = direct.keys(f"gw:bt:{record.key_id}:*")
    held = int(direct.get(counter))
    assert (held, direct.hlen(ledger)) == ((0, 0) if reply_lost else (5_000, 1))

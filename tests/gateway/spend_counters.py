"""The gateway's spend counters in the shared Redis, as the hard-limit tests drive them: a call admitted and
settled as the gateway does it, a month's counter read back."""

from __future__ import annotations

import asyncio
import uuid

from django.conf import settings
from django.utils import timezone

from serving.gateway import admission, limits, redis_pipe
from serving.gateway.keycache import KeyRecord
from serving.gateway.limits import Limiter
from serving.gateway.routing import EndpointInfo, Snapshot
from tests.gateway.key_records import key_record


def record(team_id: int, department_id: int) -> KeyRecord:
    return key_record(team_id=team_id, team=f"team-{team_id}", department_id=department_id)


def run(coroutine):
    return asyncio.run(coroutine)


async def settle(pipe, commands: list[tuple]) -> None:
    """Send settlements as the gateway does: whole scripts where Redis has not got them yet."""
    replies = await pipe.execute(*commands)
    for command, reply in zip(commands, replies, strict=True):
        if limits.unknown_script(reply):
            (reply,) = await pipe.execute(limits.as_eval(command))
        assert not isinstance(reply, Exception), reply


def counter(name: str) -> int:
    import redis

    month = timezone.now().strftime("%Y%m")
    value = redis.Redis.from_url(settings.REDIS_URL).get(f"{name}:{month}")
    return int(value or 0)


async def call(snapshot: Snapshot, key: KeyRecord, hop: EndpointInfo, shape, tokens: tuple[int, int]):
    """What the gateway does for one call answered by ``hop``: admit with its caps, then settle to the
    cost of ``tokens`` (input, output) as charged to the team and to the department."""
    from serving.gateway.routing import price_micros

    pipe = redis_pipe.connect(settings.REDIS_URL)
    limiter = Limiter(pipe)
    try:
        bound_tokens, bound_money = admission.reservation(shape, [hop])
        verdict = await limiter.admit(
            key,
            tokens=bound_tokens,
            money_micros=bound_money,
            revoked_set=f"test:revoked:{uuid.uuid4().hex}",
            caps=admission.spend_caps(snapshot, key, shape, [hop]),
        )
        if verdict.ok:
            cost = price_micros(hop, *tokens)
            team_micros, department_micros = admission.charged(key, hop, cost)
            await settle(
                pipe,
                limiter.settle(
                    verdict.reservation,
                    tokens=sum(tokens),
                    money_micros=cost,
                    team_micros=team_micros,
                    department_micros=department_micros,
                ),
            )
        return verdict
    finally:
        await pipe.close()

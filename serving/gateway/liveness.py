"""A gateway process's liveness in Redis: a background task, never on the request path.

The process registers itself at start and renews its ``alive`` key several times within the key's time to
live (inflight.ALIVE_SECONDS), so that the usage flusher reaps the in-flight ledger only of a process that
has really stopped (inflight.py). A renewal that fails is logged and tried again at the next beat; one
beat missed leaves five more before the key expires.
"""

from __future__ import annotations

import asyncio
import logging

from serving.gateway import inflight, redis_pipe

logger = logging.getLogger(__name__)

BEATS_PER_LIFETIME = 6


async def register(pipe: redis_pipe.RedisPipe | redis_pipe.ClientPipe, process_id: str) -> None:
    for reply in await pipe.execute(*inflight.register_commands(process_id)):
        if isinstance(reply, Exception):
            raise reply


async def stay_alive(pipe: redis_pipe.RedisPipe | redis_pipe.ClientPipe, process_id: str) -> None:
    while True:
        await asyncio.sleep(inflight.ALIVE_SECONDS / BEATS_PER_LIFETIME)
        try:
            await register(pipe, process_id)
        except Exception:
            logger.exception("gateway: could not renew this process's liveness in Redis")

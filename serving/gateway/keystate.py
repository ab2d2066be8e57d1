"""Key state shared by every gateway process through Redis: revocations and cache invalidation."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings

REVOKED_SET = "portfolio:gw:revoked"
INVALIDATE_CHANNEL = "portfolio:gw:keys"


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def mark_revoked(key_id: str) -> None:
    client().sadd(REVOKED_SET, key_id)


def invalidate(key_id: str) -> None:
    client().publish(INVALIDATE_CHANNEL, key_id)

"""Key state shared by every gateway process through Redis: revocations and cache invalidation.

Revocations are a sorted set of key ids scored by when they were revoked, pruned as they are added: an
entry only has to outlive the gateways' cached copies of the key (keycache.TTL), after which every process
reloads it from PostgreSQL, where it is revoked for good. So the set stays as small as a day's revocations.
"""

from __future__ import annotations

import time
from functools import lru_cache

import redis
from django.conf import settings

# A sorted set (its name changed when the old, unbounded plain set was replaced: a Redis that still holds
# that one keeps it, untouched, and admission never reads it).
REVOKED_SET = "portfolio:gw:revoked-at"
INVALIDATE_CHANNEL = "portfolio:gw:keys"
REVOKED_RETENTION_SECONDS = 86400  # far beyond keycache.TTL


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def mark_revoked(key_id: str) -> None:
    now = time.time()
    pipe = client().pipeline()
    pipe.zadd(REVOKED_SET, {key_id: now})
    pipe.zremrangebyscore(REVOKED_SET, "-inf", now - REVOKED_RETENTION_SECONDS)
    pipe.expire(REVOKED_SET, REVOKED_RETENTION_SECONDS)
    pipe.execute()


def invalidate(key_id: str) -> None:
    client().publish(INVALIDATE_CHANNEL, key_id)

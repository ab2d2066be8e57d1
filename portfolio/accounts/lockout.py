"""Login throttling: after repeated failures an account name, and separately a client address, is locked
for a while. Counters live in the cache (Redis), so every web process sees the same count."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache


def _key(kind: str, value: str) -> str:
    digest = hashlib.sha256(value.lower().encode()).hexdigest()[:32]
    return f"login-failures:{kind}:{digest}"


def _keys(username: str, ip: str | None) -> list[str]:
    keys = [_key("user", username)]
    if ip:
        keys.append(_key("ip", ip))
    return keys


def is_locked(username: str, ip: str | None) -> bool:
    counts = cache.get_many(_keys(username, ip))
    user_failures = counts.get(_key("user", username), 0)
    # An address may try a few accounts (typos of a user name), but not spray many.
    ip_failures = counts.get(_key("ip", ip), 0) if ip else 0
    return user_failures >= settings.LOGIN_FAILURE_LIMIT or ip_failures >= settings.LOGIN_FAILURE_LIMIT * 4


def register_failure(username: str, ip: str | None) -> int:
    """Count a failure and return the account's failure count within the lockout window."""
    count = 0
    for key in _keys(username, ip):
        cache.add(key, 0, timeout=settings.LOGIN_LOCKOUT_SECONDS)
        value = cache.incr(key)
        cache.touch(key, settings.LOGIN_LOCKOUT_SECONDS)
        if key.startswith("login-failures:user:"):
            count = value
    return count


def clear(username: str) -> None:
    cache.delete(_key("user", username))

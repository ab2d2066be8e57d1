"""Login throttling: after repeated failures an account name, and separately a client address, is locked
for a while. Counters live in the cache (Redis), so every web process sees the same count.

It also decides which attempts reach the audit trail. Every row there is permanent and every audit write
takes the chain lock, so an anonymous loop must not be able to flood the one or queue every audited change
behind the other. Within a lockout window the trail gets: the failures of each account name and address
up to their lock, one ``locked`` row when a lock starts (attempts refused while it holds add nothing), and
overall at most ``AUDIT_BUDGET`` such rows, then one row saying the rest of the window is only counted.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

# Sign-in rows (failures and locks) audited per lockout window, across all names and addresses. Ordinary
# typos stay far below it; past it a distributed loop costs one Redis increment per attempt and no row.
AUDIT_BUDGET = 50
# An address may try a few accounts (typos of a user name), but not spray many.
ADDRESS_FACTOR = 4

RECORD, BUDGET_SPENT, SKIP = "record", "budget_spent", "skip"


def _key(kind: str, value: str) -> str:
    digest = hashlib.sha256(value.lower().encode()).hexdigest()[:32]
    return f"login-failures:{kind}:{digest}"


def limits() -> dict[str, int]:
    return {"user": settings.LOGIN_FAILURE_LIMIT, "ip": settings.LOGIN_FAILURE_LIMIT * ADDRESS_FACTOR}


def _keys(username: str | None, ip: str | None) -> dict[str, str]:
    # No name for a single sign-on answer refused before it named anyone: only its address counts.
    keys = {"user": _key("user", username)} if username else {}
    if ip:
        keys["ip"] = _key("ip", ip)
    return keys


def is_locked(username: str | None, ip: str | None) -> bool:
    keys = _keys(username, ip)
    counts = cache.get_many(list(keys.values()))
    limit = limits()
    return any(counts.get(key, 0) >= limit[kind] for kind, key in keys.items())


def _increment(key: str, *, slide: bool, window: int | None = None) -> int:
    """Add one to a counter that lives for a lockout window (from its last increment when ``slide``)."""
    window = window or settings.LOGIN_LOCKOUT_SECONDS
    cache.add(key, 0, timeout=window)
    try:
        value = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        value = 1
    if slide:
        cache.touch(key, window)
    return value


# An attempt under way holds its place for at most this long (a web process killed mid-attempt frees it).
ATTEMPT_SECONDS = 60


def reserve(username: str | None, ip: str | None) -> bool:
    """Hold a place for an attempt about to check a password: refused (False, nothing held) when the
    failures counted plus the attempts under way reach a limit. Checking the count first and counting a
    failure only after the slow password hash let many guesses sent at once all pass the check."""
    limit, held = limits(), []
    for kind, key in _keys(username, ip).items():
        held.append(key)
        under_way = _increment(f"{key}:under-way", slide=True, window=ATTEMPT_SECONDS)
        if (cache.get(key) or 0) + under_way > limit[kind]:
            _release(held)
            return False
    return True


def release(username: str | None, ip: str | None) -> None:
    """The attempt ``reserve`` held a place for has ended (its failure, if any, counted)."""
    _release(list(_keys(username, ip).values()))


def _release(keys: list[str]) -> None:
    for key in keys:
        with contextlib.suppress(ValueError):  # expired meanwhile: nothing held any more
            cache.decr(f"{key}:under-way")


@dataclass(frozen=True)
class Failure:
    """One failed attempt, counted: the account's failures in the window, and what the audit trail gets."""

    count: int
    audit_failure: bool
    locks: tuple[str, ...]  # "user" and/or "ip": the locks this very failure started


# A failed sign-in that is not counted (the realm could not be reached: nobody's failure), audited as usual.
NOT_COUNTED = Failure(count=0, audit_failure=True, locks=())


def register_failure(username: str | None, ip: str | None) -> Failure:
    """Count a failure; say whether it is among the first of its name and address, and which locks it starts.
    A single sign-on refusal counts too, for its address and for the user name when it named one."""
    limit, counts = limits(), {}
    for kind, key in _keys(username, ip).items():
        counts[kind] = _increment(key, slide=True)
    first = all(counts[kind] <= limit[kind] for kind in counts)
    # The increment is atomic, so exactly one failure per window sees a count equal to the limit.
    locks = tuple(kind for kind in counts if counts[kind] == limit[kind])
    return Failure(count=counts.get("user", 0), audit_failure=first, locks=locks)


def audit_slot() -> str:
    """Whether the next sign-in row may be written: ``RECORD`` within the window's budget, ``BUDGET_SPENT``
    once when it runs out (write a row saying so instead), ``SKIP`` after that."""
    used = _increment("login-audit:budget", slide=False)
    if used <= AUDIT_BUDGET:
        return RECORD
    return BUDGET_SPENT if used == AUDIT_BUDGET + 1 else SKIP


def clear(username: str) -> None:
    cache.delete(_key("user", username))

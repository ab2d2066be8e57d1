"""API keys in gateway memory: looked up by key id, verified by keyed hash, no database per request.

Contract, since every unauthenticated request reaches this code:
- a presented key is checked against the token syntax (ASCII only) before anything is looked up;
- a key is loaded from PostgreSQL on first use and kept for ``TTL`` seconds, an unknown id for
  ``NEGATIVE_TTL`` seconds, each in a bounded LRU of its own (unknown ids cannot push known keys out);
- a key with a monthly budget is loaded with what it spent this month (one more query, at load only):
  admission starts a budget counter Redis lost from it, so a lost counter cannot spend a budget twice;
- loads run on a small executor of their own, never the default one the routing refresh uses, and at most
  ``MAX_PENDING`` distinct ids wait for one: past that a lookup is refused (``LookupBusy``) instead of
  queueing without end;
- a known key whose record expired keeps it, at most ``STALE_GRACE`` seconds more, while it cannot be
  reloaded (every load slot taken, by a flood of made-up ids say, or the load failed): a flood cannot lock
  out valid keys, and revocations do not wait for a reload (they are checked at admission);
- updates and revocations are published on Redis and evict a key at once in every process, a load in flight
  included (it may have read the row before the change committed, so it caches nothing); revocations are
  also checked atomically at admission, so a missed message cannot let a revoked key through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from portfolio.accounts import secrets_hashing
from serving.gateway import keystate, limits
from serving.gateway.key_loaders import KeyLoaders
from serving.gateway.payloads import AUDIO_TOKENS_PER_SECOND

logger = logging.getLogger(__name__)

TTL = 60.0
NEGATIVE_TTL = 10.0
# How long past its TTL a known key's record may still be used when it cannot be reloaded (see the module's
# docstring): a change whose invalidation message was lost could hold this much longer.
STALE_GRACE = 600.0
NEGATIVE_SIZE = 4096
MAX_PENDING = 64
LOADERS = 2
MICROS = Decimal(1_000_000)  # money in the gateway's counters: micro-units
# slm_<key id>_<secret>: as secrets_hashing.issue makes them (12 of [a-z0-9], then token_urlsafe).
SYNTAX = re.compile(r"slm_([a-z0-9]{12})_[A-Za-z0-9_-]{16,183}")


class LookupBusy(Exception):
    """Too many unknown keys are being looked up at once: retry shortly."""


@dataclass(frozen=True)
class KeyRecord:
    pk: int
    key_id: str
    secret_hash: str = field(repr=False)  # a keyed hash, but keep it out of logs and tracebacks all the same
    team_id: int
    team: str
    department_id: int
    scopes: frozenset[str]
    networks: tuple
    rpm_limit: int | None
    tpm_limit: int | None
    monthly_token_budget: int | None
    monthly_budget_micros: int | None
    expires_at: float | None
    revoked: bool
    # A key with a budget: its spend this month on the ledger when loaded, the least its budget counters
    # hold (limits.ADMIT), and the month ("YYYYMM", UTC) it was measured for (None: not measured).
    spend_month: str | None = None
    token_spend: int = 0
    money_spend_micros: int = 0

    def allows_ip(self, address: str | None) -> bool:
        if not self.networks:
            return True
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def load(key_id: str) -> KeyRecord | None:
    """Synchronous: read one key from the database (runs in a key loader thread, which keeps its connection
    while loads keep coming and closes it once idle: key_loaders.py)."""
    from django.db import close_old_connections

    from serving.gateway.models import ApiKey

    close_old_connections()
    try:
        key = ApiKey.objects.select_related("team").filter(key_id=key_id).first()
        if key is None:
            return None
        budget = key.monthly_budget
        spend_month, tokens, money = None, 0, 0
        if key.monthly_token_budget is not None or budget is not None:
            spend_month, start = limits.month_of(time.time())
            tokens, money = month_spend(key.pk, start)
        return KeyRecord(
            pk=key.pk,
            key_id=key.key_id,
            secret_hash=key.secret_hash,
            team_id=key.team_id,
            team=key.team.slug,
            department_id=key.team.department_id,
            scopes=frozenset(key.scopes),
            networks=tuple(ipaddress.ip_network(n, strict=False) for n in key.allowed_ips),
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            monthly_token_budget=key.monthly_token_budget,
            monthly_budget_micros=int(budget * MICROS) if budget is not None else None,
            expires_at=key.expires_at.timestamp() if key.expires_at else None,
            revoked=key.revoked_at is not None,
            spend_month=spend_month,
            token_spend=tokens,
            money_spend_micros=money,
        )
    finally:
        close_old_connections()  # one too old, or broken by an error: the next load opens another


def month_spend(key_pk: int, since: datetime) -> tuple[int, int]:
    """What a key spent from ``since`` (the month's start) on the ledger: tokens as admission counts them
    against its token budget (with an upload's audio tokens, payloads.audio_tokens) and money in micro-units.
    One query, on the key's index over the month's partition."""
    from django.db.models import BigIntegerField, Sum
    from django.db.models.functions import Cast

    from serving.gateway.models import UsageEvent

    audio = (Cast("audio_ms", BigIntegerField()) * AUDIO_TOKENS_PER_SECOND + 999) / 1000
    spent = UsageEvent.objects.filter(api_key_id=key_pk, at__gte=since).aggregate(
        input=Sum("input_tokens"), output=Sum("output_tokens"), audio=Sum(audio), cost=Sum("cost")
    )
    tokens = sum(spent[name] or 0 for name in ("input", "output", "audio"))
    return tokens, int((spent["cost"] or 0) * MICROS)


class _Lru:
    """A dict of at most ``size`` entries that drops the least recently used one."""

    __slots__ = ("entries", "size")

    def __init__(self, size: int):
        self.entries: OrderedDict[str, tuple[KeyRecord | None, float]] = OrderedDict()
        self.size = size

    def get(self, key_id: str, now: float) -> tuple[KeyRecord | None, float] | None:
        entry = self.entries.get(key_id)
        if entry is None:
            return None
        if entry[1] <= now:
            del self.entries[key_id]
            return None
        self.entries.move_to_end(key_id)
        return entry

    def put(self, key_id: str, entry: tuple[KeyRecord | None, float]) -> None:
        self.entries[key_id] = entry
        self.entries.move_to_end(key_id)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def pop(self, key_id: str) -> None:
        self.entries.pop(key_id, None)


class KeyCache:
    def __init__(self, size: int = 10_000, *, negative_size: int = NEGATIVE_SIZE, loaders: int = LOADERS):
        self._known = _Lru(size)
        self._unknown = _Lru(negative_size)
        self._loading: dict[str, asyncio.Future] = {}  # the load new requests for a key wait on
        self._in_flight = 0  # loads not yet ended, those an eviction detached from their key included
        self._executor = KeyLoaders(loaders)

    def __len__(self) -> int:
        return len(self._known.entries) + len(self._unknown.entries)

    def evict(self, key_id: str) -> None:
        self._known.pop(key_id)
        self._unknown.pop(key_id)
        # A load in flight may have read the row before the change committed: detached from the key, it
        # caches nothing when it ends (still counted against MAX_PENDING), and the next request loads afresh.
        self._loading.pop(key_id, None)

    def clear(self) -> None:
        self._known.entries.clear()
        self._unknown.entries.clear()
        self._loading.clear()

    async def authenticate(self, presented: str) -> KeyRecord | None:
        """The key for a presented secret if it is well-formed, known, matching, unexpired and unrevoked."""
        match = SYNTAX.fullmatch(presented)
        if match is None:
            return None
        record = await self._get(match.group(1))
        if record is None or record.revoked:
            return None
        if record.expires_at is not None and record.expires_at <= time.time():
            return None
        if not secrets_hashing.matches(presented, record.secret_hash):
            return None
        return record

    async def _get(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        known = self._known.get(key_id, now - STALE_GRACE)  # kept STALE_GRACE past its expiry
        if known is not None and known[1] > now:
            return known[0]
        stale = known[0] if known is not None else None
        entry = None if stale is not None else self._unknown.get(key_id, now)
        if entry is not None:
            return entry[0]
        pending = self._loading.get(key_id)
        if pending is None:
            if self._in_flight >= MAX_PENDING:
                if stale is not None:
                    return stale
                raise LookupBusy
            pending = asyncio.get_running_loop().run_in_executor(self._executor, load, key_id)
            self._in_flight += 1
            self._loading[key_id] = pending
            pending.add_done_callback(lambda done: self._loaded(key_id, done))
        # One load per key however many requests wait for it; shielded: a waiter cancelled (the server
        # shutting down) cancels its own wait, never the load the others wait for.
        try:
            return await asyncio.shield(pending)
        except Exception:
            if stale is None:
                raise
            return stale  # the database out of reach: the key's last record, within STALE_GRACE

    def _loaded(self, key_id: str, done: asyncio.Future) -> None:
        """A load ended (before any of its waiters resumes): its record cached, unless an eviction detached
        it from its key meanwhile (it may have read the row before the change committed)."""
        self._in_flight -= 1
        if self._loading.get(key_id) is not done:
            return
        del self._loading[key_id]
        if done.cancelled() or done.exception() is not None:
            return
        record = done.result()
        if record is None:
            self._known.pop(key_id)  # its row is gone: no last record to fall back on
            self._unknown.put(key_id, (None, time.monotonic() + NEGATIVE_TTL))
        else:
            self._known.put(key_id, (record, time.monotonic() + TTL))


async def listen_for_invalidations(redis, keys: KeyCache) -> None:
    """Evict a key from ``keys`` as soon as a process publishes that it changed: a background task, off the
    request path. After a lost subscription the whole cache is dropped, since messages may have been missed."""
    while True:
        try:
            pubsub = redis.pubsub()
            await pubsub.subscribe(keystate.INVALIDATE_CHANNEL)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    keys.evict(message["data"].decode())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("gateway: key invalidation listener failed; retrying")
            keys.clear()  # messages may have been missed: start from a cold cache
            await asyncio.sleep(1)

"""API keys in gateway memory: looked up by key id, verified by keyed hash, no database per request.

A key is loaded from PostgreSQL on first use and kept for ``TTL`` seconds; updates and revocations are
published on Redis and evict it at once in every process (and revocations are also checked atomically at
admission, so a missed message cannot let a revoked key through).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from decimal import Decimal

from portfolio.accounts import secrets_hashing

TTL = 60.0
NEGATIVE_TTL = 10.0


@dataclass(frozen=True)
class KeyRecord:
    pk: int
    key_id: str
    secret_hash: str
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
    """Synchronous: read one key from the database (runs in a worker thread)."""
    from django.db import close_old_connections

    from serving.gateway.models import ApiKey

    close_old_connections()
    try:
        key = ApiKey.objects.select_related("team").filter(key_id=key_id).first()
        if key is None:
            return None
        budget = key.monthly_budget
        return KeyRecord(
            pk=key.pk, key_id=key.key_id, secret_hash=key.secret_hash, team_id=key.team_id, team=key.team.slug,
            department_id=key.team.department_id, scopes=frozenset(key.scopes),
            networks=tuple(ipaddress.ip_network(n, strict=False) for n in key.allowed_ips),
            rpm_limit=key.rpm_limit, tpm_limit=key.tpm_limit, monthly_token_budget=key.monthly_token_budget,
            monthly_budget_micros=int(budget * Decimal(1_000_000)) if budget is not None else None,
            expires_at=key.expires_at.timestamp() if key.expires_at else None, revoked=key.revoked_at is not None,
        )
    finally:
        close_old_connections()


class KeyCache:
    def __init__(self):
        self._entries: dict[str, tuple[KeyRecord | None, float]] = {}
        self._loading: dict[str, asyncio.Future] = {}

    def evict(self, key_id: str) -> None:
        self._entries.pop(key_id, None)

    async def authenticate(self, presented: str) -> KeyRecord | None:
        """The key for a presented secret if it is well-formed, known, matching, unexpired and unrevoked."""
        key_id = secrets_hashing.parse("slm", presented)
        if key_id is None:
            return None
        record = await self._get(key_id)
        if record is None or record.revoked:
            return None
        if record.expires_at is not None and record.expires_at <= time.time():
            return None
        if not secrets_hashing.matches(presented, record.secret_hash):
            return None
        return record

    async def _get(self, key_id: str) -> KeyRecord | None:
        entry = self._entries.get(key_id)
        now = time.monotonic()
        if entry is not None and entry[1] > now:
            return entry[0]
        pending = self._loading.get(key_id)
        if pending is None:
            # One load per key however many requests wait for it.
            pending = asyncio.ensure_future(asyncio.to_thread(load, key_id))
            self._loading[key_id] = pending
            try:
                record = await pending
            finally:
                self._loading.pop(key_id, None)
            self._entries[key_id] = (record, now + (TTL if record else NEGATIVE_TTL))
            return record
        return await pending

"""Keeping a gateway process's routing table current: a background task, never on the request path.

Every ``GATEWAY_REFRESH_SECONDS`` a worker thread asks PostgreSQL for the table's fingerprint and rebuilds the
table only when it moved (fingerprint.py), and in full at least every ``FULL_REFRESH_SECONDS`` all the same.
Requests read ``gateway.snapshot``, which is replaced whole, never changed in place. A failed refresh keeps
the table loaded before it: requests go on being served from a table that ages, which the 503 log line says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from django.conf import settings

from serving.gateway.fingerprint import FULL_REFRESH_SECONDS
from serving.gateway.routing import Snapshot, build_snapshot

logger = logging.getLogger(__name__)


class Holder(Protocol):
    """What holds the table: the gateway (app.py)."""

    snapshot: Snapshot
    table_version: int  # how many routing tables this process has loaded, the current one included
    table_loaded_at: float  # time.time() of the last full read of the routing table


async def refresh(holder: Holder) -> None:
    """Load the routing table, unless its fingerprint says nothing changed since the one loaded (then
    only its age is reset); a full read at least every FULL_REFRESH_SECONDS all the same."""
    now = time.time()
    current = holder.snapshot
    full = now - holder.table_loaded_at >= FULL_REFRESH_SECONDS
    snapshot = await asyncio.to_thread(build_snapshot, "" if full else current.fingerprint)
    if snapshot is None:
        current.built_at = now
        return
    holder.snapshot = snapshot
    holder.table_loaded_at = now
    holder.table_version += 1


async def keep_refreshing(holder: Holder) -> None:
    while True:
        await asyncio.sleep(settings.GATEWAY_REFRESH_SECONDS)
        try:
            await refresh(holder)
        except Exception:
            logger.exception("gateway: routing refresh failed; keeping the previous table")


def describe_table(snapshot: Snapshot, version: int, now: float) -> str:
    """The routing table as an operator reads it in a log line: how old it is, and which of this process's
    loads (a table older than a few refresh periods means the refresh loop is failing)."""
    if not snapshot.built_at:
        return "routing table not loaded yet"
    return f"routing table loaded {max(0.0, now - snapshot.built_at):.1f} s ago (version {version})"

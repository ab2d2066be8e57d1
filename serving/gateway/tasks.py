from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from serving.gateway import inflight, keystate, partitions, usage
from serving.gateway.events import USAGE_STREAM

logger = logging.getLogger(__name__)


@shared_task(name="gateway.flush_usage")
def flush_usage() -> int:
    # Requests of gateway processes that died mid-way first become events on the stream, then all is moved.
    inflight.reap(keystate.client(), USAGE_STREAM)
    total = 0
    while (moved := usage.flush(settings.USAGE_FLUSH_BATCH)) > 0:
        total += moved
        if moved < settings.USAGE_FLUSH_BATCH:
            break
    return total


@shared_task(name="gateway.rollup_usage")
def rollup_usage() -> int:
    # The last two hours and every hour the flusher marked since (late events included); see usage.py.
    return usage.rollup()


@shared_task(name="gateway.maintain_usage_partitions")
def maintain_usage_partitions() -> dict:
    """Next months' partitions of the usage events and the end of those past retention (partitions.py).
    Where the application role does not own the table, ``portfolio migrate`` does this at each deploy."""
    from django.db.utils import ProgrammingError

    try:
        return {"created": partitions.ensure(), "dropped": partitions.drop_expired()}
    except ProgrammingError as exc:  # insufficient privilege: not the table's owner
        logger.warning("usage partitions: %s; `portfolio migrate` (as the owner) creates and drops them", exc)
        return {"created": [], "dropped": []}

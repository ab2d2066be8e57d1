from __future__ import annotations

from celery import shared_task
from django.conf import settings

from serving.gateway import inflight, keystate, usage
from serving.gateway.events import USAGE_STREAM


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

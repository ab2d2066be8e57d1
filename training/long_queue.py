"""Work queued for the long control workers (eval runs, merges) that none took up: sent again, then given up.

The long workers (``CONTROL_LONG_QUEUE``) run every team's eval runs, merges, imports and ingests. Work still queued
``queued_after`` since it was last sent is sent again: its message was lost (a broker restart, a purged queue), or
it waits behind long work, and then its copy finds it claimed (a claim is a compare-and-swap from queued) and
leaves it. Found by review: such work was failed as lost after an hour or two, while other teams' long work held
both workers. Work none took up within ``give_up_after`` is failed, so none stays queued for ever. While queued, a
row's ``heartbeat_at`` says when it was last sent (a claim sets it anew).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db.models import QuerySet

logger = logging.getLogger(__name__)


def resend_or_give_up(
    queued: QuerySet,
    *,
    label: str,
    now: datetime,
    queued_after: timedelta,
    give_up_after: timedelta,
    send: Callable[[int], None],
    fail: Callable[[int, str], bool],
    advice: str,
) -> list[int]:
    """Send again the rows of ``queued`` (its kind's queued work) not taken up ``queued_after`` since last sent;
    ``fail(pk, reason)`` those queued longer than ``give_up_after`` (True if it ended them): their ids."""
    waiting = queued.filter(created_at__lt=now - queued_after)
    failed = []
    for pk, created_at, sent_at in waiting.values_list("pk", "created_at", "heartbeat_at"):
        if created_at < now - give_up_after:
            hours = round(give_up_after.total_seconds() / 3600, 1)
            reason = f"No long control worker took it up in {hours:g} h (is one running?); {advice}"
            if fail(pk, reason):
                failed.append(pk)
        elif (sent_at or created_at) < now - queued_after and waiting.filter(
            pk=pk, heartbeat_at=sent_at
        ).update(heartbeat_at=now):
            logger.warning("%s #%s: not taken up since %s; sent again", label, pk, sent_at or created_at)
            send(pk)
    return failed

"""Node heartbeats on the database's clock: an agent records when it was last heard from with PostgreSQL's
``now()``, and the control plane compares against the same clock. A node whose clock is behind (or ahead of)
the controller's is then neither marked lost while it beats (its replicas forgotten, its healthy engines
killed as orphans when it reports back) nor kept alive after it stopped."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now


def now() -> Now:
    """What a heartbeat writes: the database's time when the row is written."""
    return Now()


def silent_before() -> ExpressionWrapper:
    """A node whose last heartbeat is older than this (``NODE_LOST_AFTER_SECONDS`` ago) is silent."""
    return ExpressionWrapper(
        Now() - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS), output_field=DateTimeField()
    )

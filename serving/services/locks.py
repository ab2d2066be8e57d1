"""Locking a row the caller looked up before the transaction began. A delete may have committed in between
(or while this change waited for the lock): the row is then "not found", as a lookup now would say, a 404
through the REST API and the web UI rather than a 500, and the change writes nothing."""

from __future__ import annotations

from portfolio.errors import NotFound
from serving.models import Endpoint


def endpoint(pk: int, *, also: int | None = None) -> Endpoint:
    """The endpoint's row, locked for the rest of the transaction; NotFound once it is deleted. ``also``:
    another endpoint's row locked with it (if it is still there), the two in id order, so two changes that
    lock the same pair from either end wait for each other instead of deadlocking."""
    ids = sorted({pk} | ({also} if also is not None else set()))
    rows = {
        found.pk: found for found in Endpoint.objects.select_for_update().filter(pk__in=ids).order_by("pk")
    }
    if pk not in rows:
        raise NotFound("Endpoint not found.")
    return rows[pk]

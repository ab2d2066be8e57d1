"""Locking a row the caller looked up before the transaction began. A delete may have committed in between
(or while this change waited for the lock): the row is then "not found", as a lookup now would say, a 404
through the REST API and the web UI rather than a 500, and the change writes nothing."""

from __future__ import annotations

from portfolio.errors import NotFound
from serving.models import Endpoint


def endpoint(pk: int) -> Endpoint:
    """The endpoint's row, locked for the rest of the transaction; NotFound once it is deleted."""
    found = Endpoint.objects.select_for_update().filter(pk=pk).first()
    if found is None:
        raise NotFound("Endpoint not found.")
    return found

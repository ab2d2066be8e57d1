"""What the list pages share: their page size and the query string their pager and filters carry."""

from __future__ import annotations

PAGE_SIZE = 50


def query_without(request, *names: str) -> str:
    """The request's query string without ``names`` (the pager adds its own ``page``)."""
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


def is_filtered(request) -> bool:
    """Whether a filter is set (an empty list then says "nothing matches", not "nothing yet")."""
    return any(value for key, value in request.GET.items() if key != "page")

"""What every list page shares: its page size, the page a request asks for, and the query string its pager
and filters carry. The htmx side (the whole page, or only the results) is ``portfolio.htmx``.
"""

from __future__ import annotations

from django.core.paginator import Page, Paginator

PAGE_SIZE = 50


def paginate(request, items, *, per_page: int = PAGE_SIZE) -> Page:
    """The page of ``items`` that ``?page=`` asks for. Not a number (``abc``) gets the first page, out of
    range (``0``, ``-1``, past the end) the last: a hostile or stale link still shows a page, never a 500."""
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def query_without(request, *names: str) -> str:
    """The request's query string without ``names`` (the pager adds its own ``page``)."""
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


def is_filtered(request) -> bool:
    """Whether a filter is set (an empty list then says "nothing matches", not "nothing yet")."""
    return any(value for key, value in request.GET.items() if key != "page")

"""What the database refuses to compare or store (a NUL character in a URL or a filter, a number past
bigint) is the caller's input, not our failure: the UI answers 400, as the REST API does
(``portfolio.api``), instead of a 500 and an error report.

The REST API maps ``DataError`` itself, so its paths are left to it; the gateway's ``/v1/*`` never
reaches Django.
"""

from __future__ import annotations

import logging

from django.db import DataError
from django.views.defaults import bad_request

logger = logging.getLogger(__name__)

# What a caller's value causes: a NUL character (refused by psycopg itself, no SQLSTATE), a character the
# encoding cannot hold (22P05), an invalid byte sequence (22021), a number out of its column's range (22003).
INPUT_STATES = {None, "22P05", "22021", "22003"}


class DataErrorMiddleware:
    """Turns a ``DataError`` from a UI view into Django's 400 page (``templates/400.html``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DataError) or request.path.startswith("/api/"):
            return None
        if getattr(exception.__cause__, "sqlstate", None) not in INPUT_STATES:
            return None  # e.g. a value too long for its column (22001): our write, a bug to report
        first_line = (str(exception).splitlines() or [""])[0]
        logger.info("UI input refused by the database: %s", first_line[:200])
        return bad_request(request, exception)

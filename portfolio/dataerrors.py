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


class DataErrorMiddleware:
    """Turns a ``DataError`` from a UI view into Django's 400 page (``templates/400.html``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DataError) or request.path.startswith("/api/"):
            return None
        logger.info("UI input refused by the database: %s", str(exception).splitlines()[0][:200])
        return bad_request(request, exception)

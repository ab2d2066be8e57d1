"""Per-request context: a request id on every response and log line, and the caller's address."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


def new_request_id() -> str:
    return uuid.uuid4().hex


def client_ip(request) -> str | None:
    """The client's address. Behind a reverse proxy listed in PORTFOLIO_TRUSTED_PROXIES the server (uvicorn)
    has already put the client's own address here from X-Forwarded-For; a forwarded header from anyone else is
    ignored, never read here: the left-most X-Forwarded-For entry is whatever the client chose to send."""
    return request.META.get("REMOTE_ADDR")


class RequestIdMiddleware:
    """Takes a well-formed ``X-Request-ID`` from the caller or makes one, and echoes it back."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        supplied = request.headers.get("X-Request-ID", "")
        request.request_id = supplied if _VALID_REQUEST_ID.match(supplied) else new_request_id()
        token = request_id_var.set(request.request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request.request_id
        return response


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True

"""Domain exceptions, mapped to HTTP once (REST API exception handlers, Django's 403/404 views)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404


class DomainError(Exception):
    """A refusal a person can act on; ``code`` is stable for scripts, ``message`` is for people."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.fields = fields or {}


class Invalid(DomainError):
    status = 400
    code = "invalid"


class Unauthenticated(DomainError):
    """No valid credentials: the message says what was wrong with those presented."""

    status = 401
    code = "unauthenticated"


class Unavailable(DomainError):
    """A service this request depends on cannot be reached; trying again later may succeed."""

    status = 503
    code = "unavailable"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class NotFound(DomainError, Http404):
    """Missing, or not visible to the caller: the two are indistinguishable on purpose."""

    status = 404
    code = "not_found"

    def __init__(self, message: str = "Not found."):
        super().__init__(message)


class Forbidden(DomainError, PermissionDenied):
    """Visible to the caller, but the caller's role does not allow this action."""

    status = 403
    code = "forbidden"

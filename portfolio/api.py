"""The REST API at /api/v1/: one NinjaAPI, app routers, auth, and the one mapping of errors to HTTP."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer, SessionAuth

from portfolio.accounts.actor import Actor
from portfolio.errors import DomainError

logger = logging.getLogger(__name__)


class PersonalTokenAuth(HttpBearer):
    """``Authorization: Bearer pat_…`` for scripts."""

    def authenticate(self, request, token: str):
        from portfolio.accounts.services import authenticate_token

        row = authenticate_token(token)
        if row is None:
            return None
        request.user = row.user
        return Actor.for_request(request, token_id=row.pk)


class BrowserSessionAuth(SessionAuth):
    """The signed-in browser session, with Django's CSRF check on unsafe methods."""

    def authenticate(self, request, key):
        user = super().authenticate(request, key)
        return Actor.for_request(request) if user else None


api = NinjaAPI(
    title="Portfolio API",
    version="1",
    description="Control plane for the model portfolio. Authenticate with `Authorization: Bearer pat_…`.",
    auth=[PersonalTokenAuth(), BrowserSessionAuth()],
    urls_namespace="api",
    docs_url="/docs",
)


def error_body(request, status: int, code: str, message: str, fields: dict | None = None):
    error = {"code": code, "message": message, "request_id": getattr(request, "request_id", None)}
    if fields:
        error["fields"] = fields
    return api.create_response(request, {"error": error}, status=status)


@api.exception_handler(DomainError)
def _domain_error(request, exc: DomainError):
    return error_body(request, exc.status, exc.code, exc.message, exc.fields)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error_body(request, 404, "not_found", "Not found.")


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc):
    return error_body(request, 403, "forbidden", str(exc) or "Forbidden.")


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    response = error_body(request, 401, "unauthenticated", "Authentication required: a valid token or session.")
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(NinjaValidationError)
def _invalid(request, exc: NinjaValidationError):
    fields: dict[str, list[str]] = {}
    for item in exc.errors:
        loc = tuple(item.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path"):
            # ("body", "payload", "name") -> "name": callers know fields, not our parameter names.
            loc = loc[2:] if len(loc) > 2 else loc[1:]
        location = ".".join(str(part) for part in loc)
        fields.setdefault(location or "__all__", []).append(item.get("msg", "invalid"))
    first = next(iter(fields.items()))
    return error_body(request, 422, "invalid", f"{first[0]}: {first[1][0]}", fields)


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    return error_body(request, exc.status_code, "error", str(exc))


@api.exception_handler(Exception)
def _unexpected(request, exc: Exception):
    logger.exception("unhandled API error")
    return error_body(request, 500, "internal", "Internal error; quote the request id when reporting it.")


def _register_routers() -> None:
    from portfolio.accounts.api import router as accounts_router
    from portfolio.audit.api import router as audit_router
    from portfolio.registry.api import router as registry_router
    from serving.api import router as serving_router
    from serving.gateway.api import router as gateway_router
    from training.api import router as training_router
    from training.jobs_api import router as jobs_router

    api.add_router("/", accounts_router)
    api.add_router("/audit", audit_router)
    api.add_router("/", registry_router)
    api.add_router("/", serving_router)
    api.add_router("/", gateway_router)
    api.add_router("/", training_router)
    api.add_router("/training", jobs_router)


_register_routers()

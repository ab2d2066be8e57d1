"""The REST API at /api/v1/: one NinjaAPI, app routers, auth, and the one mapping of errors to HTTP.

Authentication, decided in this order:
- a request with an ``Authorization`` header is judged by that header alone: a valid personal token
  authenticates it, and so does an access token of the single sign-on realm (a JWT, as Keycloak issues
  them to scripts and service accounts: ``accounts.sso.access_tokens``); anything else (missing scheme,
  junk, expired, revoked, a deactivated owner) is 401, never a fall-back to the browser session. Such a
  request is not subject to CSRF: a browser cannot be made to send an ``Authorization`` header to another
  site without a CORS preflight this API never allows;
- otherwise the signed-in browser session, with Django's CSRF check on unsafe methods (403 when it fails);
- otherwise 401.

Every operation's OpenAPI entry declares the error statuses the handlers below can answer, with the one
error shape ``{"error": {"code", "message", "fields"?, "request_id"}}``, so clients (and the schemathesis
suite in tests/security/) can rely on the document.
A path under /api/ no operation takes (404) and a method its path does not take (405) answer in the
same shape.
"""

from __future__ import annotations

import logging
from functools import wraps
from typing import Any

from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import DataError
from django.http import Http404, HttpResponseNotAllowed
from django.http.multipartparser import MultiPartParserError
from django.views.defaults import page_not_found
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer, SessionAuth
from ninja.utils import check_csrf

from portfolio.accounts.actor import Actor
from portfolio.errors import DomainError, Forbidden

logger = logging.getLogger(__name__)

# Error statuses any operation may answer (the handlers below); declared on every operation.
ERROR_STATUSES = {
    400: "The request was refused: a value is invalid or out of range.",
    401: "No valid personal token or browser session.",
    403: "The caller's role does not allow this, or the browser session failed the CSRF check.",
    404: "Not found, or not visible to the caller.",
    409: "The change conflicts with the current state.",
    413: "The request body is too large.",
    422: "The input does not match the operation's parameters.",
    503: "The single sign-on realm cannot be reached to verify an access token.",
}
ERROR_SCHEMA = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string", "description": "Stable, for scripts: invalid, not_found, ..."},
                "message": {"type": "string", "description": "For people."},
                "request_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": "The fields at fault, each with its messages.",
                },
            },
        }
    },
}


class PersonalTokenAuth(HttpBearer):
    """``Authorization: Bearer pat_…`` for scripts, or ``Bearer <access token>`` of the single sign-on
    realm (a JWT; refused with its reason, a 401)."""

    def authenticate(self, request, token: str):
        from portfolio.accounts.personal_tokens import authenticate_token
        from portfolio.accounts.sso import access_tokens

        if access_tokens.looks_like_jwt(token):
            return access_tokens.authenticate(request, token)

        row = authenticate_token(token)
        if row is None:
            return None
        request.user = row.user
        return Actor.for_request(request, token_id=row.pk)


class BrowserSessionAuth(SessionAuth):
    """The signed-in browser session, with Django's CSRF check on unsafe methods.

    Consulted only for requests without an ``Authorization`` header (see the module docstring), and the
    CSRF check runs only once a session user is known: an anonymous call is a 401, not a CSRF failure.
    """

    def __call__(self, request):
        if "authorization" in request.headers or not request.user.is_authenticated:
            return None
        # ninja's own check (Django's CsrfViewMiddleware; the API's views are exempt from the middleware).
        if (
            self.csrf
            and not getattr(request, "_ninja_csrf_exempt", False)
            and check_csrf(request) is not None
        ):
            raise Forbidden(
                "CSRF check failed: send the csrftoken cookie's value in X-CSRFToken.", code="csrf_failed"
            )
        return Actor.for_request(request)


class PortfolioAPI(NinjaAPI):
    """NinjaAPI whose OpenAPI document declares, on every operation, the errors the handlers answer, and
    whose views answer in the error shape what ninja answers outside the handlers."""

    def _get_urls(self) -> list:
        # ninja's (private) list of views: PathView._not_allowed gets no request to build the error body from.
        urls = super()._get_urls()
        for pattern in urls:
            pattern.callback = _in_error_shape(pattern.callback)
        return urls

    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: dict | None = None) -> Any:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
        reference = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path_item in schema["paths"].values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                for status, description in ERROR_STATUSES.items():
                    responses.setdefault(status, {"description": description, "content": reference})
        return schema


api = PortfolioAPI(
    title="Portfolio API",
    version="1",
    description=(
        "Control plane for the model portfolio. Authenticate with `Authorization: Bearer pat_…`, or with "
        "a Keycloak access token of the single sign-on realm: `Authorization: Bearer <JWT>`."
    ),
    auth=[PersonalTokenAuth(), BrowserSessionAuth()],
    urls_namespace="api",
    docs_url="/docs",
)


def error_body(request, status: int, code: str, message: str, fields: dict | None = None):
    error = {"code": code, "message": message, "request_id": getattr(request, "request_id", None)}
    if fields:
        error["fields"] = fields
    return api.create_response(request, {"error": error}, status=status)


def _in_error_shape(view):
    """``view`` with ninja's plain-text 405 (a method no operation of the path takes, answered before any
    handler) in the error shape."""

    @wraps(view)  # keeps ninja's csrf_exempt
    def in_error_shape(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            response = error_body(
                request, 405, "method_not_allowed", f"Method not allowed; this path takes {allowed}."
            )
            response["Allow"] = allowed
        return response

    return in_error_shape


def not_found(request, exception):
    """The site's 404 (``handler404`` in portfolio.urls): in the error shape for a path under /api/ that no
    operation takes. A handler rather than a catch-all route: it serves no URL, so it needs no permission rule."""
    if request.path_info.startswith("/api/"):
        return error_body(request, 404, "not_found", "No such API path; see /api/v1/docs.")
    return page_not_found(request, exception)


@api.exception_handler(DomainError)
def _domain_error(request, exc: DomainError):
    response = error_body(request, exc.status, exc.code, exc.message, exc.fields)
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error_body(request, 404, "not_found", "Not found.")


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc):
    return error_body(request, 403, "forbidden", str(exc) or "Forbidden.")


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    response = error_body(
        request, 401, "unauthenticated", "Authentication required: a valid token or session."
    )
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


@api.exception_handler(RequestDataTooBig)
def _too_large(request, exc):
    return error_body(request, 413, "too_large", "The request body is too large.")


@api.exception_handler(SuspiciousOperation)
@api.exception_handler(MultiPartParserError)
@api.exception_handler(BadRequest)
def _malformed(request, exc):
    # Django's refusals of a body it cannot parse, raised where request.POST/FILES is first read (a form
    # parameter, the CSRF check of a session call): too many fields (SuspiciousOperation), a multipart body
    # without a valid boundary (MultiPartParserError), a form body not in UTF-8 (BadRequest). The caller's to fix.
    return error_body(request, 400, "invalid", "The request is malformed.")


@api.exception_handler(DataError)
def _out_of_range(request, exc: DataError):
    # What the database refuses to store or compare (a page past 2**63, a NUL character in a filter) is
    # the caller's input, not our failure.
    logger.info("API input refused by the database: %s", str(exc).splitlines()[0][:200])
    return error_body(
        request, 400, "invalid", "A value is out of range or contains characters that cannot be stored."
    )


@api.exception_handler(UnicodeEncodeError)
def _unencodable(request, exc: UnicodeEncodeError):
    # A lone surrogate ("\ud800") is valid JSON but no UTF-8 text: the database driver cannot send it (and
    # raises this, not a DataError). The caller's input; any other encoding failure is our bug.
    if "surrogates" not in exc.reason:
        return _unexpected(request, exc)
    logger.info("API input refused: a lone surrogate in a string")
    return error_body(request, 400, "invalid", "A value contains characters that cannot be stored.")


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    # ninja's own refusals: a body it cannot parse (400) is the caller's input, as in _malformed.
    return error_body(request, exc.status_code, "invalid" if exc.status_code == 400 else "error", str(exc))


@api.exception_handler(Exception)
def _unexpected(request, exc: Exception):
    logger.exception("unhandled API error")
    return error_body(request, 500, "internal", "Internal error; quote the request id when reporting it.")


def _register_routers() -> None:
    from portfolio.accounts.api import router as accounts_router
    from portfolio.audit.api import router as audit_router
    from portfolio.billing.api import router as billing_router
    from portfolio.billing.api_budgets import router as billing_budgets_router
    from portfolio.billing.api_exports import router as billing_exports_router
    from portfolio.registry.api import router as registry_router
    from serving.api import router as serving_router
    from serving.api_endpoints import router as endpoints_router
    from serving.api_rollouts import router as rollouts_router
    from serving.gateway.api import router as gateway_router
    from training.api import router as training_router
    from training.evals.api import router as evals_router
    from training.evals.portfolio_api import router as portfolio_router
    from training.jobs_api import router as jobs_router

    api.add_router("/", accounts_router)
    api.add_router("/audit", audit_router)
    api.add_router("/billing", billing_exports_router)
    api.add_router("/billing", billing_budgets_router)
    api.add_router("/billing", billing_router)
    api.add_router("/", registry_router)
    api.add_router("/", serving_router)
    api.add_router("/", endpoints_router)
    api.add_router("/", rollouts_router)
    api.add_router("/", gateway_router)
    api.add_router("/", training_router)
    api.add_router("/training", jobs_router)
    api.add_router("/", evals_router)
    api.add_router("/", portfolio_router)


_register_routers()

"""Request body limits for everything Django serves, enforced in ASGI before Django reads a byte.

Django's ASGI handler reads a request's whole body (spooled to disk past 10 MiB) before any middleware,
authentication or view runs, so a limit inside Django comes too late: an anonymous client could fill the
disk with one request. Here, ahead of Django:

- a declared ``Content-Length`` over the route's limit is answered 413 at once, the body never read;
- a body without one (``Transfer-Encoding: chunked``) is counted as it streams and cut off at the limit,
  so no more than the limit is ever spooled.

Upload routes (a model's adapter, a dataset's version: UI and REST) take ``MAX_UPLOAD_BYTES`` plus
``MAX_REQUEST_BODY_BYTES`` for their form fields, from a caller with a credential of an active account (a
signed-in session, a personal token, an access token of the realm whose signature holds: ``credentialed``);
every other route, and an upload route from anyone else, ``MAX_REQUEST_BODY_BYTES``. Who may upload what is
the view's to say; the services check an upload's exact size afterwards. The refusal is in the route's error shape: JSON
``{"error": {...}}`` under ``/api/``, a plain page elsewhere, and closes the connection so a client still
sending is not read further. The gateway's ``/v1`` never comes here (``GATEWAY_MAX_BODY_BYTES``).
"""

from __future__ import annotations

import re
import uuid
from http.cookies import CookieError, SimpleCookie
from importlib import import_module
from types import SimpleNamespace

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.urls import Resolver404, resolve

# Django URL routes (``ResolverMatch.route``) that take a file; the test of this module checks that every
# REST operation with a file parameter is here.
UPLOAD_ROUTES = frozenset(
    {
        "api/v1/models/<name>/uploads",
        "api/v1/datasets/<dataset_id>/versions",
        "models/<str:name>/upload/",
        "training/datasets/<slug:team>/<str:name>/upload/",
    }
)
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


def limit_for(path_info: str) -> int:
    """The largest body, in bytes, the route at ``path_info`` accepts."""
    default = settings.MAX_REQUEST_BODY_BYTES
    try:
        route = resolve(path_info).route
    except Resolver404:
        return default
    return settings.MAX_UPLOAD_BYTES + default if route in UPLOAD_ROUTES else default


def credentialed(scope) -> bool:
    """Whether the request carries a credential of an active account (see the module). Runs in a thread:
    it reads the session or token from the database."""
    from django.contrib.auth import get_user

    from portfolio.accounts.personal_tokens import authenticate_token
    from portfolio.accounts.sso import access_tokens

    headers = dict(scope["headers"])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and token:
        if access_tokens.looks_like_jwt(token):
            return access_tokens.signature_holds(token)
        return authenticate_token(token) is not None
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
    except CookieError:
        return False
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    if morsel is None or not morsel.value:
        return False
    session = import_module(settings.SESSION_ENGINE).SessionStore(morsel.value)
    # Django's own judgement of a session, as its AuthenticationMiddleware makes it moments later: its user
    # active, and its password unchanged since sign-in (a session of before a password change is anonymous).
    return get_user(SimpleNamespace(session=_SessionCopy(session.items()))).is_authenticated


class _SessionCopy(dict):
    """A session's data for ``get_user`` to judge, its repairs not written back: a new key after a secret
    rotation, saved here, would leave the client's cookie naming a deleted session; the request's own
    session middleware makes them."""

    def flush(self) -> None:
        self.clear()

    def cycle_key(self) -> None:
        pass


async def _limit(scope) -> int:
    """The route's limit for this caller: an upload route's only with a credential."""
    limit = limit_for(_path_info(scope))
    if limit > settings.MAX_REQUEST_BODY_BYTES and not await sync_to_async(credentialed)(scope):
        return settings.MAX_REQUEST_BODY_BYTES
    return limit


def _path_info(scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _content_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses such a request itself
    return None


class BodyLimit:
    """ASGI middleware around Django: refuses request bodies past their route's limit (see the module)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        default = settings.MAX_REQUEST_BODY_BYTES
        # Every route accepts the default, so only a larger body needs its route looked up.
        limit: int | None = None
        declared = _content_length(scope)
        if declared is not None and declared > default:
            limit = await _limit(scope)
            if declared > limit:
                return await _refuse(scope, send, limit)
        received = 0
        refused = False

        async def counted_receive():
            nonlocal received, limit, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received > default:
                limit = limit if limit is not None else await _limit(scope)
                if received > limit:
                    refused = True
                    await _refuse(scope, send, limit)
                    # Django's handler drops a request whose client went away, without a response of its own.
                    return {"type": "http.disconnect"}
            return message

        return await self.app(scope, counted_receive, send)


async def _refuse(scope, send, limit: int) -> None:
    supplied = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"")
    request_id = supplied.decode() if _VALID_REQUEST_ID.match(supplied) else uuid.uuid4().hex
    message = f"The request body is larger than this route accepts ({limit:,} bytes)."
    if limit_for(_path_info(scope)) > limit:
        message += " Uploads are taken from a signed-in session or a request with a valid token only."
    if _path_info(scope).startswith("/api/"):
        body = orjson.dumps(
            {"error": {"code": "request_too_large", "message": message, "request_id": request_id}}
        )
        content_type = b"application/json"
    else:
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Request too large</title></head>'
            f"<body><h1>Request too large</h1><p>{message}</p><p>Request {request_id}</p></body></html>\n"
        ).encode()
        content_type = b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

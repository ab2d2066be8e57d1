"""ASGI entry point (uvicorn): the gateway's lean app serves ``/v1/*`` and ``/metrics`` ahead of Django,
so the hot path never goes through Django's request machinery. Everything else reaches Django through
``BodyLimit``, which refuses a body past its route's limit before Django reads any of it."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

django_handler = get_asgi_application()

from portfolio.bodylimit import BodyLimit  # noqa: E402 - needs Django set up first
from serving.gateway.app import Gateway  # noqa: E402 - needs Django set up first

django_application = BodyLimit(django_handler)
gateway = Gateway()


async def application(scope, receive, send):
    if scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] == "/metrics"):
        return await gateway(scope, receive, send)
    if scope["type"] == "lifespan":
        return await gateway.lifespan(scope, receive, send)
    return await django_application(scope, receive, send)

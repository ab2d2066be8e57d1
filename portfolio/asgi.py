"""ASGI entry point (uvicorn). Later the gateway's lean /v1 app is mounted ahead of Django here."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

application = get_asgi_application()

"""Static files under ASGI stream asynchronously, so Django serves them without its "must consume synchronous
iterators" warning; the synchronous (WSGI) path is unchanged."""

import asyncio
import warnings
from pathlib import Path

import pytest
from django.test import AsyncClient, Client

# Django's request signals look at the thread's database connection, which an earlier test may have left.
pytestmark = pytest.mark.django_db

APP_JS = Path(__file__).resolve().parents[1] / "portfolio" / "static" / "portfolio" / "app.js"


async def _body(response) -> bytes:
    return b"".join([chunk async for chunk in response])


def test_a_static_file_streams_asynchronously_under_asgi_without_a_warning():
    async def fetch():
        response = await AsyncClient().get("/static/portfolio/app.js")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            body = await _body(response)
        response.close()
        return response, body

    response, body = asyncio.run(fetch())
    assert response.status_code == 200
    assert response.is_async
    assert body == APP_JS.read_bytes()


def test_a_static_file_is_still_served_synchronously_under_wsgi():
    response = Client().get("/static/portfolio/app.js")
    assert response.status_code == 200
    assert not response.is_async
    assert b"".join(response.streaming_content) == APP_JS.read_bytes()
    response.close()

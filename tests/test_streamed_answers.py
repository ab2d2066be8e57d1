"""Streamed answers under ASGI are sent as they are read: Django's ASGI handler reads a synchronous iterator
whole before sending a byte, so a download of a multi-GB weight file (streamed through the platform from an
S3 store) held the whole file in the web server's memory, once per download in flight."""

from __future__ import annotations

import asyncio

from django.http import HttpResponse, StreamingHttpResponse
from django.test import AsyncRequestFactory, RequestFactory

from portfolio.staticfiles import StaticFilesMiddleware


class Chunks:
    """Five chunks, counting how many were read."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self):
        for _ in range(5):
            self.read += 1
            yield b"x" * 1024


def test_a_streamed_download_is_read_a_chunk_at_a_time_under_asgi():
    chunks = Chunks()
    middleware = StaticFilesMiddleware(lambda request: StreamingHttpResponse(iter(chunks)))
    response = middleware(AsyncRequestFactory().get("/api/v1/models/m/versions/1/files/model.safetensors"))
    assert response.is_async

    async def first_chunk():
        stream = aiter(response.streaming_content)
        first = await anext(stream)
        read_then = chunks.read
        rest = [chunk async for chunk in stream]
        return first, read_then, rest

    first, read_then, rest = asyncio.run(first_chunk())
    assert (len(first), read_then, len(rest)) == (1024, 1, 4)


def test_other_answers_and_wsgi_are_left_as_they_are():
    chunks = Chunks()
    wsgi = StaticFilesMiddleware(lambda request: StreamingHttpResponse(iter(chunks)))(
        RequestFactory().get("/x")
    )
    assert not wsgi.is_async
    plain = StaticFilesMiddleware(lambda request: HttpResponse(b"ok"))(AsyncRequestFactory().get("/x"))
    assert plain.content == b"ok"

"""Static files under ASGI (uvicorn). WhiteNoise answers with a file read synchronously, which Django's ASGI
handler would read whole with a warning on every request ("StreamingHttpResponse must consume synchronous
iterators"). Under ASGI the same file is read chunk by chunk in a worker thread instead."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from whitenoise.middleware import WhiteNoiseMiddleware


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


async def _read_in_a_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    read = sync_to_async(_next_chunk, thread_sensitive=False)
    while (chunk := await read(chunks)) is not None:
        yield chunk


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, streaming its files asynchronously when the request came through ASGI."""

    def serve(self, static_file, request):
        response = super().serve(static_file, request)
        if isinstance(request, ASGIRequest):
            response.streaming_content = _read_in_a_thread(iter(response.streaming_content))
        return response

"""Static files and every other streamed answer under ASGI (uvicorn). WhiteNoise answers with a file read
synchronously, and so do downloads (a model's weights, a dataset's rows, an audit export), which Django's ASGI
handler would read whole into memory before sending a byte, with a warning ("StreamingHttpResponse must
consume synchronous iterators"): a few downloads of a multi-GB weight file at once would exhaust the web
server. Under ASGI they are read chunk by chunk in a worker thread instead."""

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
    """WhiteNoise, and under ASGI every streamed answer of a synchronous iterator (its files, and the views'
    below it) read asynchronously, a chunk at a time."""

    def __call__(self, request):
        response = super().__call__(request)
        if isinstance(request, ASGIRequest) and response.streaming and not response.is_async:
            response.streaming_content = _read_in_a_thread(iter(response.streaming_content))
        return response

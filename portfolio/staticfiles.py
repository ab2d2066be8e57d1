"""Static files under ASGI (uvicorn). WhiteNoise answers with a file read synchronously, which Django's ASGI
handler would read whole with a warning on every request ("StreamingHttpResponse must consume synchronous
iterators"). Under ASGI the same file is read chunk by chunk in a worker thread instead."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from whitenoise.middleware import WhiteNoiseMiddleware

_END = object()


async def _read_in_a_thread(chunks):
    read = sync_to_async(next, thread_sensitive=False)
    while (chunk := await read(chunks, _END)) is not _END:
        yield chunk


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, streaming its files asynchronously when the request came through ASGI."""

    def serve(self, static_file, request):  # type: ignore[override]
        response = super().serve(static_file, request)
        if isinstance(request, ASGIRequest):
            response.streaming_content = _read_in_a_thread(iter(response.streaming_content))
        return response

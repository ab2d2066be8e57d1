"""A stand-in for a vLLM replica (OpenAI-compatible, with usage), for testing the gateway's own logic:
auth to the engine, accounting, streaming, timeouts and failover. Real vLLM is covered in tests/e2e."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

from aiohttp import web


class FakeEngine:
    def __init__(self, expected_key: str | None = None, *, chunk_delay: float = 0.0, delay: float = 0.0,
                 close_reused_connections: bool = False):
        self.expected_key = expected_key
        self.chunk_delay = chunk_delay
        self.delay = delay
        # Hang up, without an answer, on every request that comes over an already used keep-alive connection:
        # what a client sees when the engine closes an idle connection just as the client reuses it.
        self.close_reused_connections = close_reused_connections
        self._used_connections: set[int] = set()
        self.hung_up = 0
        self.requests: list[dict] = []
        self.port = 0
        self._loop = None
        self._runner = None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.expected_key and request.headers.get("Authorization") != f"Bearer {self.expected_key}":
            return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
        if self.close_reused_connections:
            connection = id(request.transport)
            if connection in self._used_connections:
                self.hung_up += 1
                request.transport.close()
                raise asyncio.CancelledError
            self._used_connections.add(connection)
        body = await request.json()
        self.requests.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        completion = int(body.get("max_tokens") or 5)
        prompt = 10
        if not body.get("stream"):
            return web.json_response({
                "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "word " * completion}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        continuous = (body.get("stream_options") or {}).get("continuous_usage_stats")
        for i in range(completion):
            chunk = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
            if continuous:
                chunk["usage"] = {"prompt_tokens": prompt, "completion_tokens": i + 1, "total_tokens": prompt + i + 1}
            try:
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            except (ConnectionResetError, RuntimeError):
                return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        final = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                 "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                          "total_tokens": prompt + completion}}
        await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    def start(self) -> FakeEngine:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self.chat)
            app.router.add_get("/health", self.health)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)

"""A stand-in for a vLLM replica (OpenAI-compatible, with usage), for testing the gateway's own logic:
auth to the engine, accounting, streaming, timeouts and failover. Real vLLM is covered in tests/e2e.

What it bills follows vLLM 0.32 exactly (vllm/entrypoints/openai/*/serving.py), at the worst case: every
completion runs to its limit (as with ``ignore_eos``), so a test sees the most a request can cost.
- ``n`` completions per prompt (``use_beam_search``: ``n`` beams); ``/v1/completions`` takes a string, a
  token-id list, or a list of either, each element its own prompt;
- a completion's limit: chat prefers ``max_completion_tokens`` to ``max_tokens``, completions default to
  16, and with no limit a chat completion runs to the end of the context; a limit above the context, or
  more than the context leaves after the prompt (prompt tokens + limit > ``max_model_len``), is refused
  with a 400; ``echo`` with ``max_tokens: 0`` generates one token;
- usage: each prompt once, plus every completion's tokens; streams carry usage per choice on each chunk
  (``continuous_usage_stats``) and a final usage chunk with no choices (``include_usage``), only as asked;
- errors in vLLM's shape (``{"error": {..., "code": 400}}``), and FastAPI's ``{"detail": "Not Found"}``
  for a path it does not serve (it serves no embeddings).
Its tokenizer: a chat conversation is always 10 tokens; a text prompt is one token per word plus one.
Its answers: "word word ..." to the limit; or, given ``answer(body, choice index)``, that text's words (one
token each, up to the limit). Asked for ``logprobs``, each token gets ``logprob`` (a number, or a function of
the choice index).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable

from aiohttp import web

CHAT_PROMPT_TOKENS = 10


class FakeEngine:
    def __init__(
        self,
        expected_key: str | None = None,
        *,
        chunk_delay: float = 0.0,
        delay: float = 0.0,
        close_reused_connections: bool = False,
        max_model_len: int = 512,
        answer: Callable[[dict, int], str] | None = None,
        logprob: float | Callable[[int], float] = -0.1,
        media: bool = False,
        drop_after: int | None = None,
    ):
        # Hang up after this many streamed chunks (or mid-body, unstreamed): an engine lost mid-answer.
        self.drop_after = drop_after
        self.media = media  # also serve the audio, rerank and score routes (tests/gateway/media_engine.py)
        self.answer, self.logprob = answer, logprob
        self.expected_key = expected_key
        self.chunk_delay = chunk_delay
        self.delay = delay
        self.max_model_len = max_model_len
        # Hang up, without an answer, on every request that comes over an already used keep-alive connection:
        # what a client sees when the engine closes an idle connection just as the client reuses it.
        self.close_reused_connections = close_reused_connections
        self._used_connections: set[int] = set()
        self.hung_up = 0
        self.requests: list[dict] = []
        self.request_ids: list[str] = []  # the X-Request-ID each generation request came with
        self.produced = 0  # completion tokens written, over all requests
        self.port = 0
        self._loop = None
        self._runner = None

    # --- vLLM's request semantics ---------------------------------------------------------------
    @staticmethod
    def _error(message: str, param: str | None = None, status: int = 400) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": "BadRequestError", "param": param, "code": status}},
            status=status,
        )

    def _prompts(self, kind: str, body: dict) -> list[int]:
        if kind == "chat":
            return [CHAT_PROMPT_TOKENS]
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return [len(prompt.split()) + 1]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return [len(prompt)]
        if isinstance(prompt, list) and prompt:
            return [len(p.split()) + 1 if isinstance(p, str) else len(p) for p in prompt]
        raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")

    def _limit(self, kind: str, body: dict) -> int | None:
        if kind == "chat":
            limit = body.get("max_completion_tokens")
            return body.get("max_tokens") if limit is None else limit
        limit = body.get("max_tokens")
        return 16 if limit is None else limit

    async def generate(self, request: web.Request) -> web.StreamResponse:
        kind = "chat" if request.path.endswith("/chat/completions") else "completion"
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
        self.request_ids.append(request.headers.get("X-Request-ID", ""))
        if self.delay:
            await asyncio.sleep(self.delay)
        if body.get("stream_options") and not body.get("stream"):
            return self._error("Stream options can only be defined when `stream=True`.", "stream_options")
        try:
            prompts = self._prompts(kind, body)
        except ValueError as exc:
            return self._error(str(exc), "prompt")
        limit = self._limit(kind, body)
        if limit is not None and limit > self.max_model_len:
            name = (
                "max_completion_tokens"
                if kind == "chat" and body.get("max_completion_tokens")
                else "max_tokens"
            )
            return self._error(
                f"{name}={limit} cannot be greater than max_model_len={self.max_model_len}. "
                "Please request fewer output tokens.",
                name,
            )
        if any(p > self.max_model_len for p in prompts):
            return self._error(
                f"This model's maximum context length is {self.max_model_len} tokens.", "input_tokens"
            )
        longest = max(prompts)
        if limit is not None and longest + limit > self.max_model_len:
            # vLLM's own check (serving_engine's _validate_input): the limit must fit after the prompt.
            return self._error(
                f"'max_tokens' or 'max_completion_tokens' is too large: {limit}. This model's maximum "
                f"context length is {self.max_model_len} tokens and your request has {longest} input "
                f"tokens ({limit} > {self.max_model_len} - {longest}).",
                "max_tokens",
            )
        n = body.get("n") or 1
        echo_only = kind == "completion" and body.get("echo") and limit == 0
        lengths = [
            1 if echo_only else min(self.max_model_len if limit is None else limit, self.max_model_len - p)
            for p in prompts
        ]
        if body.get("stream"):
            return await self._stream(request, kind, body, prompts, lengths, n)
        if self.drop_after is not None:  # a body announced, cut short
            response = web.StreamResponse(
                headers={"Content-Type": "application/json", "Content-Length": "4096"}
            )
            await response.prepare(request)
            await response.write(b'{"id": "cmpl-1", "choices": [')
            request.transport.close()
            return response
        choices = []
        completion = 0
        for prompt_index, length in enumerate(lengths):
            for j in range(n):
                tokens = self._tokens(body, prompt_index * n + j, length)
                completion += len(tokens)
                text = "".join(tokens)
                choice = {"index": prompt_index * n + j, "finish_reason": "length"}
                choice.update(
                    {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text}
                )
                if body.get("logprobs") or (kind == "completion" and body.get("logprobs") is not None):
                    choice["logprobs"] = self._logprobs(kind, tokens, prompt_index * n + j)
                choices.append(choice)
        self.produced += completion
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": choices,
                "usage": {
                    "prompt_tokens": sum(prompts),
                    "completion_tokens": completion,
                    "total_tokens": sum(prompts) + completion,
                },
            }
        )

    def _tokens(self, body: dict, index: int, length: int) -> list[str]:
        if self.answer is None:
            return ["word "] * length
        return [w + " " for w in self.answer(body, index).split()[:length]]

    def _logprobs(self, kind: str, tokens: list[str], index: int) -> dict:
        value = self.logprob(index) if callable(self.logprob) else self.logprob
        if kind == "chat":
            return {
                "content": [{"token": t, "logprob": value, "bytes": None, "top_logprobs": []} for t in tokens]
            }
        return {
            "tokens": tokens,
            "token_logprobs": [value] * len(tokens),
            "top_logprobs": None,
            "text_offset": [],
        }

    async def _stream(self, request, kind, body, prompts, lengths, n) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        continuous = include_usage and bool(options.get("continuous_usage_stats"))
        kind_name = "chat.completion.chunk" if kind == "chat" else "text_completion"
        produced = [0] * (len(prompts) * n)
        texts = {
            p * n + j: self._tokens(body, p * n + j, length)
            for p, length in enumerate(lengths)
            for j in range(n)
        }
        lengths = [max((len(texts[p * n + j]) for j in range(n)), default=0) for p in range(len(lengths))]
        # As vLLM steps: one token of every unfinished choice per step, each in a chunk of its own.
        for step in range(max(lengths)):
            for prompt_index, length in enumerate(lengths):
                if step >= length:
                    continue
                for j in range(n):
                    index = prompt_index * n + j
                    if step >= len(texts[index]):
                        continue
                    produced[index] += 1
                    self.produced += 1
                    token = texts[index][step]
                    delta = {"delta": {"content": token}} if kind == "chat" else {"text": token}
                    chunk = {
                        "id": "cmpl-1",
                        "object": kind_name,
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": index, **delta, "finish_reason": None}],
                    }
                    if continuous:
                        chunk["usage"] = {
                            "prompt_tokens": prompts[prompt_index],
                            "completion_tokens": produced[index],
                            "total_tokens": prompts[prompt_index] + produced[index],
                        }
                    if self.drop_after is not None and sum(produced) > self.drop_after:
                        request.transport.close()
                        return response
                    try:
                        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    except (ConnectionResetError, RuntimeError):
                        return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        if include_usage:
            total = sum(produced)
            final = {
                "id": "cmpl-1",
                "object": kind_name,
                "created": 0,
                "model": body["model"],
                "choices": [],
                "usage": {
                    "prompt_tokens": sum(prompts),
                    "completion_tokens": total,
                    "total_tokens": sum(prompts) + total,
                },
            }
            await response.write(f"data: {json.dumps(final)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not Found"}, status=404)

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
            app.router.add_post("/v1/chat/completions", self.generate)
            app.router.add_post("/v1/completions", self.generate)
            app.router.add_get("/health", self.health)
            if self.media:
                from tests.gateway.media_engine import add_routes

                add_routes(self, app)
            app.router.add_route("*", "/{tail:.*}", self.not_found)
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

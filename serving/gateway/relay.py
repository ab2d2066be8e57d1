"""Answers to the client over ASGI: the gateway's own, and the engine's passed on whole or as server-sent
events as they come, with the model renamed to the endpoint called and usage taken from the engine's counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import orjson

from serving.gateway import errors, payloads
from serving.gateway.errors import GatewayError
from serving.gateway.events import Outcome
from serving.gateway.upstream import Response

PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "rerank": "/v1/rerank",
    "score": "/v1/score",
    "transcription": "/v1/audio/transcriptions",
    "translation": "/v1/audio/translations",
}
# The most of an engine's answer read whole (and parsed): the largest a call may ask for is under it
# (2,048 embeddings of 4,096 floats, or PORTFOLIO_GATEWAY_MAX_PROMPT_LOGPROBS log-probabilities).
MAX_ANSWER_BYTES = 256 * 1024 * 1024
# Past this, a 200 answer is not parsed: parsing and re-encoding 2,048 embeddings of 4,096 floats (~150 MB)
# took several times its size again, per request. The model is renamed on the bytes and only the small
# `usage` object is parsed; an ordinary answer (a few KB) keeps the parse.
PARSED_ANSWER_BYTES = 1024 * 1024
# A `usage` key and its object: numbers, and objects of numbers one level down (prompt_tokens_details).
# A key inside a JSON string cannot match: its quotes are escaped there.
# Past this, an unfinished event's next pieces are kept aside and only they are searched for its end: one
# event of tens of MB (echo with log-probabilities of a long prompt) comes in hundreds of pieces, and adding
# each to the whole and splitting it again took seconds of CPU. Most pieces hold whole events.
LARGE_EVENT = 64 * 1024
USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')


class ClientGone(Exception):
    """The client went away mid-stream: ends the read of the engine's answer."""


class Renamer:
    """Clients see the endpoint name they called as ``model``, never the deployment or adapter behind it."""

    __slots__ = ("endpoint", "pattern", "replacement")

    def __init__(self, upstream: str, endpoint: str):
        self.endpoint = endpoint
        self.pattern = re.compile(rb'"model"\s*:\s*"' + re.escape(upstream.encode()) + rb'"')
        self.replacement = b'"model":"' + endpoint.encode() + b'"'

    def __call__(self, chunk: bytes) -> bytes:
        return self.pattern.sub(self.replacement, chunk)


class StreamUsage:
    """The engine's counts of a stream: its final usage chunk when it came, else (the client went away
    first) the latest count of each choice. vLLM's per-chunk usage counts one choice: its prompt and what
    that choice has produced so far (choice i belongs to prompt i // n), not the whole request."""

    __slots__ = ("completion", "error", "final", "n", "prompt")

    def __init__(self, n: int):
        self.n = max(1, n)
        self.prompt: dict[int, int] = {}
        self.completion: dict[int, int] = {}
        self.final: tuple[int, int] | None = None
        self.error = 0  # the status of an error event the engine sent mid-stream (0: none)

    def take(self, usage: dict, choices: list) -> None:
        counts = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        if not choices:
            self.final = counts
            return
        index = choices[0].get("index", 0) if isinstance(choices[0], dict) else 0
        index = index if isinstance(index, int) else 0
        self.prompt[index // self.n], self.completion[index] = counts

    def totals(self) -> tuple[int, int]:
        return self.final or (sum(self.prompt.values()), sum(self.completion.values()))

    def take_error(self, event: bytes) -> None:
        """vLLM's error mid-stream (``data: {"error": {..., "code": 400}}``): its code, else a 502."""
        try:
            code = orjson.loads(event[6:])["error"]["code"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            code = None
        self.error = code if isinstance(code, int) and 400 <= code < 600 else 502


async def read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(499, "Client closed the request.", "client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"The request body exceeds {limit} bytes.", "request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(
    send,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes = b"application/json",
    extra: list | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def relay_whole(send, response: Response, request_id: str, rename: Renamer, outcome: Outcome) -> None:
    data = await response.read(MAX_ANSWER_BYTES)  # TooLarge past it: billed and answered by forwarding
    outcome.status = response.status
    content_type = response.headers.get(b"content-type", b"application/json")
    if response.status == 200 and len(data) > PARSED_ANSWER_BYTES:
        data = _relay_large(data, rename, outcome)
    elif response.status == 200:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
            parsed = orjson.loads(data)
            outcome.take_usage(parsed.get("usage"))
            if "model" in parsed:
                parsed["model"] = rename.endpoint
                data = orjson.dumps(parsed)
    else:
        outcome.error = "upstream_error"
        data, content_type = (
            errors.from_upstream(response.status, data, PATHS[outcome.kind]),
            b"application/json",
        )
    await respond(send, response.status, data, request_id, content_type)
    outcome.sent = True


def _relay_large(data: bytes, rename: Renamer, outcome: Outcome) -> bytes:
    """A large answer as the client gets it, with no parse of the whole: usage from its last ``usage``
    object (the top level's comes after the data in vLLM's answers), the model renamed on the bytes."""
    end = len(data)
    while (at := data.rfind(b'"usage"', 0, end)) >= 0:  # from the end: most often found at once
        found = USAGE_OBJECT.match(data, at)
        if found is not None:
            with contextlib.suppress(orjson.JSONDecodeError):
                outcome.take_usage(orjson.loads(found.group(1)))
            break
        end = at
    view, start = memoryview(data), 0
    pieces: list[memoryview | bytes] = []
    for match in rename.pattern.finditer(data):
        pieces += (view[start : match.start()], rename.replacement)
        start = match.end()
    if not pieces:
        return data
    # Joined from views of the answer: one copy of it, not one per slice as re.sub makes.
    return b"".join((*pieces, view[start:]))


def pass_event(event: bytes, rename: Renamer, shape: payloads.Shape, usage: StreamUsage) -> bytes | None:
    """One server-sent event as the client gets it (None: not at all), its usage noted. The engine always
    sends usage; the client gets the final usage chunk (no choices) only if it asked for it
    (``stream_options.include_usage``), and usage on the other chunks only if it also asked for that
    (``continuous_usage_stats``)."""
    if not (event.startswith(b"data: {") and b'"usage"' in event):
        if event.startswith(b'data: {"error"'):  # only events without usage: an error has none
            usage.take_error(event)
        return rename(event) + b"\n\n"
    try:
        parsed = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return rename(event) + b"\n\n"
    counts, choices = parsed.get("usage"), parsed.get("choices")
    if not isinstance(counts, dict):
        return rename(event) + b"\n\n"
    choices = choices if isinstance(choices, list) else []
    usage.take(counts, choices)
    if not choices:
        return rename(event) + b"\n\n" if shape.include_usage else None
    if shape.continuous_usage:
        return rename(event) + b"\n\n"
    del parsed["usage"]
    if "model" in parsed:
        parsed["model"] = rename.endpoint
    return b"data: " + orjson.dumps(parsed) + b"\n\n"


async def relay_stream(
    receive,
    send,
    response: Response,
    request_id: str,
    rename: Renamer,
    outcome: Outcome,
    started: float,
) -> None:
    """Pass server-sent events through as they come; meter from the engine's counts; stop (and bill what
    was produced) as soon as the client goes away."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    outcome.status, outcome.sent = 200, True
    disconnected = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                # Wakes a read waiting on a silent engine (queued, a long prefill): the stream ends now and
                # the engine's slot is given back (the connection closed), not at its next chunk.
                response.fail(ClientGone())
                return

    watcher = asyncio.create_task(watch())
    usage = StreamUsage(outcome.shape.n)
    pending = b""  # an unfinished event (events are whole before they are passed on)
    parts: list[bytes] = []  # a large one's pieces after ``pending``, joined once it is whole
    events: list[bytes]
    try:
        async for chunk in response.chunks():
            if outcome.ttft is None:
                outcome.ttft = time.perf_counter() - started
            if len(pending) < LARGE_EVENT:
                pending += chunk
                *events, pending = pending.split(b"\n\n")
            elif b"\n\n" in chunk or (
                chunk.startswith(b"\n") and (parts[-1] if parts else pending).endswith(b"\n")
            ):
                *events, pending = b"".join((pending, *parts, chunk)).split(b"\n\n")
                parts.clear()
            else:
                parts.append(chunk)
                events = []
            passed = [out for event in events if (out := pass_event(event, rename, outcome.shape, usage))]
            if disconnected.is_set():
                outcome.status, outcome.error = 499, "client_disconnected"
                return
            if passed:
                await send({"type": "http.response.body", "body": b"".join(passed), "more_body": True})
        if usage.error:
            outcome.status, outcome.error = usage.error, "upstream_error"
        rest = b"".join((pending, *parts))
        await send({"type": "http.response.body", "body": rename(rest) if rest.strip() else b""})
    except ClientGone:
        outcome.status, outcome.error = 499, "client_disconnected"
    finally:
        watcher.cancel()
        outcome.input_tokens, outcome.output_tokens = usage.totals()
        if outcome.error == "client_disconnected" and not usage.error and usage.totals() == (0, 0):
            # Gone before the engine's first count: it may have prefilled the whole prompt by then (seconds
            # for a long one). Billed nothing, a key could have prefill for free, dropping each stream early.
            outcome.input_tokens = prompt_estimate(outcome)


# Bytes of text per token, about: the reservation's bounds count a byte a token (never too few for admission);
# a bill by them charged a dropped English prompt about four times its tokens (found by review).
BYTES_PER_TOKEN = 4


def prompt_estimate(outcome: Outcome) -> int:
    """The prompt tokens of a request whose engine sent no count: a token per ``BYTES_PER_TOKEN`` of each
    prompt's bound (its bytes, or its token ids' count), each at most the context."""
    hop = outcome.answered or outcome.first
    length = hop.max_model_len if hop is not None else payloads.USAGE_TOKENS_MAX
    tokens = sum(min(-(-bound // BYTES_PER_TOKEN), length) for bound in outcome.shape.prompts)
    return min(tokens, payloads.USAGE_TOKENS_MAX)

"""Answers a composite endpoint makes up itself, in the shapes the client asked: an intermediate hop's answer
kept whole (Capture), headers added to a hop's response, and an answer the gateway picked sent whole or as a
valid server-sent-event stream (send_answer). No I/O but the client's ``send``.
"""

from __future__ import annotations

import orjson

from serving.gateway import payloads
from serving.gateway.relay import respond


class Capture:
    """An ASGI ``send`` that keeps a whole response instead of sending it (an intermediate hop's answer)."""

    def __init__(self):
        self.status, self.body = 0, b""

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        else:
            self.body += message.get("body", b"")


async def never_disconnects() -> dict:  # an intermediate hop is read whole: nothing listens to the client
    raise AssertionError("an intermediate hop does not stream")


async def send_answer(
    send, request_id: str, kind: str, answer: dict, shape: payloads.Shape, extra: list[tuple[bytes, bytes]]
) -> None:
    """An answer the gateway picked, whole or (the client asked to stream) as server-sent events."""
    if not shape.stream:
        await respond(send, 200, orjson.dumps(answer), request_id, extra=extra)
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-request-id", request_id.encode()),
                *extra,
            ],
        }
    )
    head = {k: answer.get(k) for k in ("id", "created", "model")}
    events = []
    for choice in answer["choices"]:
        index, finish = choice.get("index", 0), choice.get("finish_reason")
        if kind == "chat":
            message = choice.get("message") or {}
            delta = {k: v for k, v in message.items() if v is not None}
            # A streamed tool call carries its place (the SDKs gather the deltas by it); an answer's have none.
            if isinstance(delta.get("tool_calls"), list):
                delta["tool_calls"] = [
                    dict(call, index=place) if isinstance(call, dict) else call
                    for place, call in enumerate(delta["tool_calls"])
                ]
            first = {
                "index": index,
                "delta": delta,
                "logprobs": choice.get("logprobs"),
                "finish_reason": None,
            }
            last = {"index": index, "delta": {}, "finish_reason": finish}
        else:
            first = {
                "index": index,
                "text": choice.get("text", ""),
                "logprobs": choice.get("logprobs"),
                "finish_reason": None,
            }
            last = {"index": index, "text": "", "finish_reason": finish}
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        events += [{**head, "object": obj, "choices": [first]}, {**head, "object": obj, "choices": [last]}]
    if shape.include_usage:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        events.append({**head, "object": obj, "choices": [], "usage": answer.get("usage")})
    body = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": body})

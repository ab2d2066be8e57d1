"""An answer the gateway picked (a cascade's kept small answer, a vote's) sent as a stream when one was asked:
its tool calls carry their place, which streamed tool-call deltas must (the openai SDK's stream helper
gathered them by it and failed with a TypeError on an answer's calls, which have none)."""

from __future__ import annotations

import asyncio

import orjson
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from serving.gateway import payloads
from serving.gateway.answers import send_answer

CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": '{"zone": "CET"}'}},
]
ANSWER = {
    "id": "chatcmpl-1",
    "created": 1,
    "model": "sure",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": CALLS},
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}


def test_a_picked_answers_tool_calls_stream_with_their_places_and_the_sdk_gathers_them():
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=16, n=1, stream=True, include_usage=True)
    asyncio.run(send_answer(send, "r1", "chat", ANSWER, shape, []))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    chunks = [orjson.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]
    assert [call["index"] for call in chunks[0]["choices"][0]["delta"]["tool_calls"]] == [0, 1]
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    assert [call.function.name for call in final.choices[0].message.tool_calls] == ["weather", "time"]

"""Large answers read whole (serving/gateway/relay.py): an engine's answer of tens of megabytes (2,048
embeddings of 4,096 floats is ~150 MB) is relayed with its model renamed and its usage metered, without
parsing and re-encoding the whole of it, which cost several times its size per request."""

from __future__ import annotations

import asyncio
import tracemalloc

import orjson

from serving.gateway import relay
from serving.gateway.events import Outcome
from serving.gateway.payloads import Shape


class Answered:
    """An engine's response already read: what relay_whole uses of upstream.Response."""

    def __init__(self, body: bytes):
        self.status, self.headers, self.body = 200, {b"content-type": b"application/json"}, body

    async def read(self, limit: int | None = None) -> bytes:
        return self.body


def embeddings(inputs: int, dims: int = 4096) -> bytes:
    vector = b"[" + b",".join([b"-0.0123456789012345"] * dims) + b"]"
    items = b",".join(
        b'{"index":%d,"object":"embedding","embedding":%s}' % (i, vector) for i in range(inputs)
    )
    return (
        b'{"id":"embd-1","object":"list","created":1,"model":"org/deployed-model","data":['
        + items
        + b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":0,'
        b'"prompt_tokens_details":{"cached_tokens":0}}}' % (inputs * 2, inputs * 2)
    )


def relay_whole(body: bytes) -> tuple[bytes, Outcome, int]:
    """The client's body, the outcome, and the most memory relay_whole held at once beyond the answer."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    outcome = Outcome(
        endpoint="embed", kind="embedding", shape=Shape(prompts=(1,), choices=1, per_choice=0), event_id="e"
    )
    rename = relay.Renamer("org/deployed-model", "embed")
    tracemalloc.start()
    try:
        asyncio.run(relay.relay_whole(send, Answered(body), "r", rename, outcome))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sent[-1]["body"], outcome, peak


def test_a_large_embeddings_answer_is_renamed_and_metered_within_a_copy_of_its_size():
    body = embeddings(400)  # ~33 MB
    assert len(body) > 30 * 1024 * 1024
    sent, outcome, peak = relay_whole(body)
    assert peak < 1.5 * len(body), f"relaying {len(body):,} bytes held {peak:,} more at once"
    assert (outcome.input_tokens, outcome.output_tokens) == (800, 0), "metered from the engine's usage"
    assert sent.startswith(b'{"id":"embd-1","object":"list","created":1,"model":"embed","data":[')
    assert b"deployed-model" not in sent, "the deployment's name never reaches the client"
    answer = orjson.loads(sent)
    assert len(answer["data"]) == 400 and len(answer["data"][-1]["embedding"]) == 4096
    assert answer["usage"]["prompt_tokens"] == 800


def test_a_usage_key_inside_a_string_of_a_large_answer_is_not_taken_for_the_answers_usage():
    text = '{"usage": {"prompt_tokens": 999999}}' * (relay.PARSED_ANSWER_BYTES // 30)
    body = orjson.dumps(
        {
            "model": "org/deployed-model",
            "usage": {"prompt_tokens": 7, "completion_tokens": 5},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        }
    )
    assert len(body) > relay.PARSED_ANSWER_BYTES
    sent, outcome, _ = relay_whole(body)
    assert (outcome.input_tokens, outcome.output_tokens) == (7, 5)
    answer = orjson.loads(sent)
    assert answer["model"] == "embed" and answer["choices"][0]["message"]["content"] == text

"""A stream its client drops before the engine's first chunk is billed its prompt as estimated from its size
(a token per four bytes, at most the context): the engine may have prefilled all of it by then. Billed nothing, a key could send long prompts and drop
each stream before its first token, for free prefill (found by review). A stream the engine has counted is
billed its counts, as before."""

from __future__ import annotations

import asyncio
from typing import cast

from serving.gateway import relay
from serving.gateway.events import Outcome
from serving.gateway.upstream import Response
from tests.gateway.test_stream_faults import (
    ENDPOINT,
    EVENT,
    HEAD,
    SHAPE,
    Client,
    chunk,
    engine,
    forward,
    silent,
)
from tests.gateway.test_upstream import in_loop


@in_loop
async def test_a_stream_dropped_while_its_engine_prefills_is_billed_its_prompt():
    async def prefilling(reader, writer):
        writer.write(HEAD)
        await writer.drain()
        await silent(reader)

    client = Client()
    async with engine(prefilling) as base:
        asyncio.get_running_loop().call_later(0.1, client.gone.set)
        outcome, _ = await forward(base, client, read_timeout=5)
    assert (outcome.status, outcome.error) == (499, "client_disconnected")
    assert (outcome.input_tokens, outcome.output_tokens) == (-(-SHAPE.prompts[0] // 4), 0)


@in_loop
async def test_each_prompt_is_billed_at_most_the_context_of_the_model():
    class Prefilling:
        """An engine's answer that sends nothing until the client leaves (relay_stream then fails it)."""

        def __init__(self) -> None:
            self.failed: asyncio.Future = asyncio.get_running_loop().create_future()

        async def chunks(self):
            raise await self.failed
            yield b""  # a generator, as Response.chunks is

        def fail(self, error: Exception) -> None:
            self.failed.set_result(error)

    client = Client()
    shape = SHAPE._replace(prompts=(10_000, 100))  # the first's estimate (2,500) past the context of 2,048
    outcome = Outcome(endpoint="chat", kind="completion", shape=shape, event_id="e-1", first=ENDPOINT)
    asyncio.get_running_loop().call_later(0.05, client.gone.set)
    await relay.relay_stream(
        client.receive,
        client.send,
        cast(Response, Prefilling()),
        "r-1",
        relay.Renamer("dep", "chat"),
        outcome,
        0.0,
    )
    assert outcome.error == "client_disconnected"
    assert (outcome.input_tokens, outcome.output_tokens) == (2_048 + 25, 0)


@in_loop
async def test_a_stream_dropped_after_the_engines_first_count_is_billed_that_count():
    async def one_token(reader, writer):
        writer.write(HEAD + chunk(EVENT))
        await writer.drain()
        await silent(reader)

    class LeavesAfterTheFirstChunk(Client):
        """Gone once the first chunk reached it, not after a set time (a loaded loop would be later)."""

        async def send(self, message: dict) -> None:
            await super().send(message)
            if message.get("body"):
                self.gone.set()

    client = LeavesAfterTheFirstChunk()
    async with engine(one_token) as base:
        outcome, _ = await forward(base, client, read_timeout=5)
    assert outcome.error == "client_disconnected"
    assert (outcome.input_tokens, outcome.output_tokens) == (8, 1)


@in_loop
async def test_a_whole_stream_is_billed_the_engines_final_counts():
    final = (
        b'data: {"id":"c","model":"dep","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2}}\n\n'
    )

    async def answered(reader, writer):
        writer.write(HEAD + chunk(EVENT * 2 + final + b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    client = Client()
    async with engine(answered) as base:
        outcome, _ = await forward(base, client, read_timeout=5)
    assert (outcome.status, outcome.error) == (200, "")
    assert (outcome.input_tokens, outcome.output_tokens) == (8, 2)
    assert client.ended()

"""A stream's faults on the gateway's hot path (relay.py, forwarding.py), against small asyncio engines that
answer with raw bytes: a client gone while its engine is silent, one event of many MB, an engine lost or
silent after the 200 went out, an engine's own error event; and a composite's final hop timed from its own
start."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import cast

import orjson

from serving.gateway import composite, forwarding, payloads, relay
from serving.gateway.events import Outcome
from serving.gateway.payloads import Shape
from serving.gateway.routing import Balancer, EndpointInfo, ReplicaInfo, Route, Snapshot
from serving.gateway.upstream import Response, Upstream
from tests.gateway.test_upstream import in_loop

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT = (
    b'data: {"id":"c","model":"dep","choices":[{"index":0,"delta":{"content":"a"}}],'
    b'"usage":{"prompt_tokens":8,"completion_tokens":1}}\n\n'
)
SHAPE = Shape(prompts=(8,), choices=1, per_choice=4, stream=True)
ENDPOINT = EndpointInfo(
    name="chat",
    team_id=1,
    routes=(Route(weight=100, deployment="dep", upstream_model="dep", adapter="", version_id=1),),
    fallback=None,
    input_micros_per_token=0.0,
    output_micros_per_token=0.0,
    max_model_len=2048,
)


async def silent(reader: asyncio.StreamReader) -> None:
    """Sends nothing more until the gateway closes the connection (at most 5 s)."""
    await asyncio.wait_for(reader.read(), 5)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@contextlib.asynccontextmanager
async def engine(answer):
    """An engine on a local port: reads one request, then ``answer(reader, writer)``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
            await reader.readexactly(int(length[15:]))
            await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


class Client:
    """The ASGI side: what was sent, and a disconnect when ``leave()`` is called."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def ended(self) -> bool:
        last = self.sent[-1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


async def forward(base: str, client: Client, read_timeout: float) -> tuple[Outcome, Upstream]:
    upstream = Upstream(connect_timeout=2, read_timeout=read_timeout)
    gateway = SimpleNamespace(
        upstream=upstream,
        balancer=Balancer(),
        snapshot=Snapshot(replicas={"dep": [ReplicaInfo(7, base, b"Bearer x")]}),
        table_version=1,
        renamers={},
    )
    outcome = Outcome(endpoint="chat", kind="chat", shape=SHAPE, event_id="e-1")
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": True}
    await asyncio.wait_for(
        forwarding.forward(
            gateway,
            client.receive,
            client.send,
            "r-1",
            [ENDPOINT],
            "chat",
            body,
            outcome,
            time.perf_counter(),
        ),
        10,
    )
    await upstream.close()
    return outcome, upstream


@in_loop
async def test_a_client_gone_while_its_engine_is_silent_ends_the_stream_at_once_and_frees_the_engine():
    closed = asyncio.Event()

    async def queued(reader, writer):
        writer.write(HEAD)
        await writer.drain()
        await silent(reader)
        closed.set()

    client = Client()
    async with engine(queued) as base:
        asyncio.get_running_loop().call_later(0.1, client.gone.set)
        began = time.perf_counter()
        outcome, _ = await forward(base, client, read_timeout=5)
        took = time.perf_counter() - began
        await asyncio.wait_for(closed.wait(), 2)
    assert took < 2, f"the stream ended {took:.1f} s after the client left at 0.1 s"
    assert (outcome.status, outcome.error) == (499, "client_disconnected")


async def _relay(pieces: list[bytes]) -> tuple[Client, Outcome, float]:
    class Pieces:
        async def chunks(self):
            for piece in pieces:
                yield piece

        def fail(self, error):
            pass

    client = Client()
    outcome = Outcome(endpoint="chat", kind="completion", shape=SHAPE, event_id="e-1")
    response = cast(Response, Pieces())  # what relay_stream uses of one
    began = time.perf_counter()
    await relay.relay_stream(
        client.receive, client.send, response, "r-1", relay.Renamer("dep", "chat"), outcome, began
    )
    return client, outcome, time.perf_counter() - began


@in_loop
async def test_one_event_of_many_mb_is_searched_once_not_once_per_piece():
    big = b'data: {"choices":[{"index":0,"text":"' + b"x" * (16 << 20) + b'"}]}\n\n'
    pieces = [big[i : i + 32768] for i in range(0, len(big), 32768)]
    client, _, took = await _relay(pieces)
    assert client.body() == big and client.ended()
    # Searched and copied again per piece, it took 2-3 s (quadratic); once, a few tens of ms.
    assert took < 0.5, f"a 16 MiB event in 32 KiB pieces took {took:.2f} s"


@in_loop
async def test_events_split_anywhere_across_pieces_are_passed_whole_and_metered():
    large = b'data: {"choices":[{"index":0,"text":"' + b"y" * 3 * relay.LARGE_EVENT + b'"}]}\n\n'
    stream = EVENT + large + EVENT * 2 + b"data: [DONE]\n\n"
    ends = [len(EVENT) - 1, len(EVENT) + len(large) - 1]  # "\n" | "\n" across pieces, small and large
    cuts = [[*range(0, len(stream), size), len(stream)] for size in (13, 4096, len(EVENT) + 1, 65537)]
    cuts.append([0, 10, *ends, len(stream)])
    cuts.append([0, *range(len(EVENT) + 10, len(EVENT) + len(large), 100_000), ends[1], len(stream)])
    for cut in cuts:
        pieces = [stream[a:b] for a, b in zip(cut, cut[1:], strict=False) if b > a]
        assert b"".join(pieces) == stream
        client, outcome, _ = await _relay(pieces)
        body = client.body()
        assert body.count(b"data: ") == 5 and body.endswith(b"data: [DONE]\n\n"), cut[:4]
        assert large in body and client.ended()
        assert b'"model":"chat"' in body and b'"dep"' not in body and b'"usage"' not in body
        assert (outcome.input_tokens, outcome.output_tokens) == (8, 1)


def _error_event(body: bytes) -> dict:
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]", body[-300:]
    return orjson.loads(events[-2][len(b"data: ") :])["error"]


@in_loop
async def test_an_engine_lost_mid_stream_ends_it_with_an_error_event_and_a_whole_body():
    async def lost(reader, writer):
        writer.write(HEAD + chunk(EVENT))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()  # no terminating chunk

    client = Client()
    async with engine(lost) as base:
        outcome, _ = await forward(base, client, read_timeout=5)
    assert client.ended(), "the body ends (more_body False): not a cut chunked body"
    error = _error_event(client.body())
    assert (error["code"], error["type"]) == ("upstream_error", "api_error") and error["message"]
    assert (outcome.status, outcome.error) == (502, "upstream_error")
    assert (outcome.input_tokens, outcome.output_tokens) == (8, 1), "what was produced is metered"


@in_loop
async def test_an_engine_silent_mid_stream_ends_it_with_a_timeout_event_billed_what_it_produced():
    async def stalls(reader, writer):
        writer.write(HEAD + chunk(EVENT))
        await writer.drain()
        await silent(reader)

    client = Client()
    async with engine(stalls) as base:
        outcome, _ = await forward(base, client, read_timeout=0.5)
    assert client.ended()
    assert _error_event(client.body())["code"] == "upstream_timeout"
    assert (outcome.status, outcome.error, outcome.worst_case) == (504, "upstream_timeout", False)
    assert (outcome.input_tokens, outcome.output_tokens) == (8, 1)


@in_loop
async def test_a_stream_whose_engine_sent_nothing_until_the_timeout_is_billed_its_worst_case():
    """As the same call unstreamed is: the engine had it and may have worked to the end."""

    async def headers_only(reader, writer):
        writer.write(HEAD)
        await writer.drain()
        await silent(reader)

    client = Client()
    async with engine(headers_only) as base:
        outcome, _ = await forward(base, client, read_timeout=0.5)
    assert (outcome.status, outcome.error, outcome.worst_case) == (504, "upstream_timeout", True)
    assert (outcome.input_tokens, outcome.output_tokens) == payloads.worst_usage(SHAPE, 2048)
    assert outcome.output_tokens == 4
    assert _error_event(client.body())["code"] == "upstream_timeout" and client.ended()


@in_loop
async def test_an_error_event_of_the_engines_is_passed_on_and_recorded():
    error = (
        b'data: {"error":{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}}'
    )

    async def fails(reader, writer):
        writer.write(HEAD + chunk(error + b"\n\ndata: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    client = Client()
    async with engine(fails) as base:
        outcome, _ = await forward(base, client, read_timeout=5)
    assert client.ended() and _error_event(client.body())["message"] == "bad"
    assert (outcome.status, outcome.error) == (400, "upstream_error")


def test_a_composites_final_hop_times_its_first_token_from_its_own_start():
    """Its latency is its own span: its time to first token must not include the hops before it."""
    seen: list[float] = []

    async def dispatch(receive, send, request_id, chain, public, payload, outcome, started, caller):
        seen.append(started)

    began = time.perf_counter() - 5  # the request began 5 s ago: the earlier hops took that long
    run = composite.Run(SimpleNamespace(_dispatch=dispatch), "r-1", ("k", {}), ENDPOINT, "e-1", began)
    run._outcome(ENDPOINT, "chat", SHAPE._replace(stream=False))  # the classifier, done
    run.spans[-1][1] = time.perf_counter()
    asyncio.run(run.final(None, None, ENDPOINT, "chat", {}, SHAPE, []))
    assert seen == [run.spans[-1][0]] and seen[0] > began + 4

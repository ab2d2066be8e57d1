"""The gateway's HTTP/1.1 client to engines (serving/gateway/upstream.py), against small asyncio servers
that answer with raw bytes: keep-alive reuse, chunked and until-close bodies, streaming as it comes, the
errors the forwarding loop acts on (connect failed, dropped, read timeout), back-pressure and idle expiry."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from serving.gateway import relay
from serving.gateway.events import Outcome
from serving.gateway.payloads import Shape
from serving.gateway.upstream import HIGH_WATER, ConnectFailed, Dropped, ReadTimeout, TooLarge, Upstream

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class Server:
    """Answers each request on a connection with the next of ``answers`` (bytes, or a callable taking the
    writer); records what it received and how many connections were opened."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))[15:]
                )
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if callable(answer):
                    await answer(writer)
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def in_loop(test):
    """An async test run in its own event loop (the project does not use pytest-asyncio), within 30 s."""

    def run():
        asyncio.run(asyncio.wait_for(test(), 30))

    run.__name__ = test.__name__
    return run


def _client(**kwargs) -> Upstream:
    return Upstream(
        connect_timeout=kwargs.pop("connect_timeout", 2), read_timeout=kwargs.pop("read_timeout", 2), **kwargs
    )


async def _post(upstream: Upstream, base: str, body: bytes = b'{"model":"m"}'):
    return await upstream.post(base, "/v1/chat/completions", body, [(b"Authorization", b"Bearer engine-key")])


@in_loop
async def test_a_response_is_read_whole_and_the_connection_is_kept_for_the_next_request():
    async with Server([OK, OK]) as base:
        upstream = _client()
        for _ in range(2):
            response = await _post(upstream, base)
            assert response.status == 200
            assert response.headers[b"content-type"] == b"application/json"
            assert await response.read() == b'{"ok":true}'
            response.release()
        await upstream.close()


@in_loop
async def test_one_connection_serves_requests_one_after_the_other_and_the_request_is_written_whole():
    server = Server([OK, OK, OK])
    async with server as base:
        upstream = _client()
        for _ in range(3):
            response = await _post(upstream, base, b'{"model":"m","x":1}')
            await response.read()
            response.release()
        await upstream.close()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 19\r\n" in first and b"\r\nAuthorization: Bearer engine-key\r\n" in first
    assert first.endswith(b'\r\n\r\n{"model":"m","x":1}')


@in_loop
async def test_concurrent_requests_open_a_connection_each():
    release = asyncio.Event()

    async def slow(writer):
        await release.wait()
        writer.write(OK)
        await writer.drain()

    server = Server([slow, slow])
    async with server as base:
        upstream = _client()
        pending = [asyncio.ensure_future(_post(upstream, base)) for _ in range(2)]
        await asyncio.sleep(0.2)
        release.set()
        for response in await asyncio.gather(*pending):
            assert await response.read() == b'{"ok":true}'
            response.release()
        await upstream.close()
    assert server.connections == 2


@in_loop
async def test_a_chunked_stream_is_passed_on_as_it_comes():
    got_first = asyncio.Event()

    async def stream(writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"8\r\ndata: 1\n\r\n")
        await writer.drain()
        await asyncio.wait_for(got_first.wait(), 5)  # the second event only once the first was read
        writer.write(b"8\r\ndata: 2\n\r\n0\r\n\r\n")
        await writer.drain()

    async with Server([stream, OK]) as base:
        upstream = _client()
        response = await _post(upstream, base)
        pieces = []
        async for chunk in response.chunks():
            pieces.append(chunk)
            got_first.set()
        assert pieces == [b"data: 1\n", b"data: 2\n"]
        response.release()
        again = await _post(upstream, base)  # the connection was reusable after a whole chunked body
        assert await again.read() == b'{"ok":true}'
        again.release()
        await upstream.close()


@in_loop
async def test_a_body_that_ends_with_the_connection_is_whole_and_the_connection_is_not_reused():
    async def until_close(writer):
        writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"ok":1}')
        await writer.drain()
        writer.close()

    server = Server([until_close])
    async with server as base:
        upstream = _client()
        response = await _post(upstream, base)
        assert await response.read() == b'{"ok":1}'
        response.release()
        assert not upstream._idle.get(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        await upstream.close()


@in_loop
async def test_nothing_listening_is_a_failed_connect():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    upstream = _client()
    with pytest.raises(ConnectFailed):
        await _post(upstream, f"http://127.0.0.1:{port}")
    await upstream.close()


@in_loop
async def test_a_connection_closed_before_the_answer_is_dropped_and_one_closed_mid_body_too():
    async def hang_up(writer):
        writer.close()

    async def half(writer):
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()
        writer.close()

    async with Server([hang_up]) as base:
        upstream = _client()
        with pytest.raises(Dropped):
            await _post(upstream, base)
        await upstream.close()
    async with Server([half]) as base:
        upstream = _client()
        response = await _post(upstream, base)
        with pytest.raises(Dropped):
            await response.read()
        response.release()
        await upstream.close()


@in_loop
async def test_a_pooled_connection_the_engine_closed_is_not_handed_out_again():
    async def answer_then_close(writer):
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = Server([answer_then_close, OK])
    async with server as base:
        upstream = _client()
        response = await _post(upstream, base)
        await response.read()
        response.release()
        await asyncio.sleep(0.2)  # the close reaches the idle connection: out of the pool
        assert not any(upstream._idle.values())
        server.answers = [OK]
        again = await _post(upstream, base)
        assert await again.read() == b'{"ok":true}'
        again.release()
        await upstream.close()
    assert server.connections == 2


@in_loop
async def test_silence_longer_than_the_read_timeout_is_a_read_timeout_before_and_during_the_body():
    async def silent(writer):
        await asyncio.sleep(5)

    async def stalls(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def slow_but_steady(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        # 1.8 s in all, never 1 s of silence: a wide margin, as server and client share one event loop.
        for _ in range(6):
            await asyncio.sleep(0.3)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    for answer in (silent, stalls):
        async with Server([answer]) as base:
            upstream = _client(read_timeout=1.0)
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(ReadTimeout):
                response = await _post(upstream, base)
                await response.read()
            assert loop.time() - began < 4  # not the server's 5 s of silence
            await upstream.close()
    async with Server([slow_but_steady]) as base:
        upstream = _client(read_timeout=1.0)
        response = await _post(upstream, base)
        assert await response.read() == b"x" * 6
        response.release()
        await upstream.close()


@in_loop
async def test_a_slow_reader_stops_the_socket_being_read_past_the_high_water_mark():
    size = 4 * HIGH_WATER

    async def big(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        await writer.drain()

    async with Server([big]) as base:
        upstream = _client()
        response = await _post(upstream, base)
        await asyncio.sleep(0.3)  # nobody reads: the client buffers about HIGH_WATER, not all of it
        assert response._size < 2 * HIGH_WATER + 65536
        assert response._paused
        received = b"".join([chunk async for chunk in response.chunks()])
        assert len(received) == size
        response.release()
        await upstream.close()


@in_loop
async def test_an_idle_connection_is_closed_after_the_keepalive_time():
    server = Server([OK, OK])
    async with server as base:
        upstream = _client(keepalive=0.2)
        response = await _post(upstream, base)
        await response.read()
        response.release()
        await asyncio.sleep(0.4)
        assert not any(upstream._idle.values())
        again = await _post(upstream, base)
        await again.read()
        again.release()
        await upstream.close()
    assert server.connections == 2


@in_loop
async def test_a_response_released_before_its_end_closes_its_connection():
    async def stream(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    server = Server([stream])
    async with server as base:
        upstream = _client()
        response = await _post(upstream, base)
        async for _chunk in response.chunks():
            break
        response.release()  # the client went away mid-stream
        assert response.connection.closed and not any(upstream._idle.values())
        await upstream.close()


def _big(size: int, chunked: bool = False):
    async def answer(writer):
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(size // 65536):
                writer.write(b"10000\r\n" + b"x" * 65536 + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        await writer.drain()

    return answer


@in_loop
async def test_a_body_past_the_high_water_mark_is_still_read_whole():
    """Reading stops past HIGH_WATER until the buffer is taken: a whole read must take it as it comes."""
    size = 16 * HIGH_WATER
    for chunked in (False, True):
        async with Server([_big(size, chunked)]) as base:
            upstream = _client(read_timeout=1)
            response = await _post(upstream, base)
            assert len(await response.read(limit=size)) == size
            response.release()
            await upstream.close()


@in_loop
async def test_a_body_read_whole_past_its_limit_is_too_large_said_or_sent():
    size = 16 * HIGH_WATER
    for chunked in (False, True):
        async with Server([_big(size, chunked)]) as base:
            upstream = _client(read_timeout=1)
            response = await _post(upstream, base)
            with pytest.raises(TooLarge):
                await response.read(limit=size // 2)
            response.release()
            assert response.connection.closed, "a body not read to its end leaves bytes on the connection"
            await upstream.close()


@in_loop
async def test_an_answer_larger_than_the_gateway_relays_is_a_502_not_read_on():
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    original = relay.MAX_ANSWER_BYTES
    relay.MAX_ANSWER_BYTES = 4 * HIGH_WATER
    try:
        async with Server([_big(16 * HIGH_WATER, chunked=True)]) as base:
            upstream = _client(read_timeout=1)
            response = await _post(upstream, base)
            outcome = Outcome(
                endpoint="m", kind="chat", shape=Shape(prompts=(1,), choices=1, per_choice=1), event_id="e"
            )
            with pytest.raises(TooLarge):  # forwarding bills it and answers a 502 in OpenAI's shape
                await relay.relay_whole(send, response, "r", relay.Renamer("m", "m"), outcome)
            response.release()
            await upstream.close()
    finally:
        relay.MAX_ANSWER_BYTES = original
    assert sent == [], "nothing of it reaches the client"


def test_a_timeout_on_a_replica_dropped_from_the_table_meanwhile_is_not_billed_as_the_engines_work():
    """A request waiting on a node that lost power times out on the platform's outage: once the routing table
    no longer holds its replica, the timeout is not billed at the worst case."""
    from serving.gateway.forwarding import _still_served
    from serving.gateway.routing import ReplicaInfo, Snapshot

    serving = Snapshot(replicas={"dep": [ReplicaInfo(7, "http://127.0.0.1:1", b"Bearer x")]})
    assert _still_served(serving, "dep", 7)
    assert not _still_served(serving, "dep", 8) and not _still_served(Snapshot(), "dep", 7)


def test_a_timeout_on_a_replica_being_drained_is_billed_as_the_engines_work():
    """A replica being drained left the routing table but works on what it was sent: a timeout on it is the
    engine's work, as on a replica in the table, not an outage."""
    from serving.gateway.forwarding import _still_served
    from serving.gateway.routing import Snapshot

    assert _still_served(Snapshot(draining=frozenset({7})), "dep", 7)
    assert not _still_served(Snapshot(draining=frozenset({7})), "dep", 8)

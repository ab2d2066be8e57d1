"""The gateway's HTTP/1.1 client to the engines: keep-alive connections pooled per engine, a request written
in one piece, the response parsed by httptools (the parser uvicorn uses) and read whole or as it comes.

aiohttp's client did the same with about a quarter of the gateway's CPU per request (a py-spy profile under
load: request and header objects, a payload registry, timers per read, stream readers); what the gateway
needs is a POST with a few headers of its own to an engine it knows. Errors say what the caller can do:

- ``ConnectFailed``: nothing was sent (refused, unreachable, connect timeout): another replica may answer;
- ``Dropped``: the connection closed before the whole response came (most often a pooled keep-alive
  connection the engine had closed): the request may be tried again on a fresh connection;
- ``ReadTimeout`` (a ``TimeoutError``): the engine sent nothing for ``read_timeout`` seconds;
- ``TooLarge``: a body read whole is longer than the reader allows.

Connections idle longer than ``keepalive`` seconds are closed. A streamed response stops reading from the
socket while ``HIGH_WATER`` bytes wait for a slow client, and goes on when they are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024


class ConnectFailed(ConnectionError):
    """Could not connect: nothing reached the engine."""


class Dropped(ConnectionError):
    """The connection closed before the whole response came."""


class ReadTimeout(TimeoutError):
    """The engine sent nothing for the read timeout."""


class TooLarge(Exception):
    """A body read whole was longer than the reader's limit."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its response parsed as it comes."""

    def __init__(self, pool: Upstream, address: tuple[str, int]):
        self.pool, self.address = pool, address
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser  # a new one for each request (Upstream.post)
        self.closed = False
        self.response: Response | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        response.last_data = response.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            response.fail(Dropped(f"Bad response from the engine: {exc}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._cancel_idle()
        if self.response is None:  # idle in the pool: out of it
            self.pool.forget(self)
        response = self.response
        if response is not None and not response.complete:
            if response.headers_done and response.until_eof:
                response.finish()
            else:
                response.fail(Dropped(f"Connection closed by the engine: {exc or 'end of stream'}"))

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.lower()] = value  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        response.status = self.parser.get_status_code()  # type: ignore[union-attr]
        headers = response.headers  # type: ignore[union-attr]
        response.until_eof = b"content-length" not in headers and b"chunked" not in headers.get(  # type: ignore[union-attr]
            b"transfer-encoding", b""
        )
        response.headers_done = True  # type: ignore[union-attr]
        response.wake()  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self.response.take(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.response.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]
        self.response.finish()  # type: ignore[union-attr]

    # --- the pool's side ---
    def close(self) -> None:
        self.closed = True
        self._cancel_idle()
        if self.transport is not None:
            self.transport.close()

    def _cancel_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


class Response:
    """An engine's response: ``status`` and ``headers`` (lower-case names) once ``Upstream.post`` returns;
    the body by ``read()`` or ``chunks()``; ``release()`` when done, always."""

    __slots__ = (
        "_buffer",
        "_error",
        "_paused",
        "_size",
        "_timer",
        "_waiter",
        "complete",
        "connection",
        "headers",
        "headers_done",
        "keep_alive",
        "last_data",
        "loop",
        "read_timeout",
        "status",
        "until_eof",
    )

    def __init__(self, connection: _Connection, read_timeout: float):
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.read_timeout = read_timeout
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.headers_done = self.complete = self.keep_alive = self.until_eof = False
        self._buffer: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self.last_data = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # --- fed by the connection ---
    def take(self, body: bytes) -> None:
        self._buffer.append(body)
        self._size += len(body)
        if self._size > HIGH_WATER and not self._paused and self.connection.transport is not None:
            self._paused = True
            self.connection.transport.pause_reading()
        self.wake()

    def finish(self) -> None:
        self.complete = True
        self.wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- read by the gateway ---
    async def _wait(self) -> None:
        """Until something new came (headers, body, the end, an error), at most read_timeout of silence."""
        if self._error is not None:
            raise self._error
        self._waiter = self.loop.create_future()
        if self._timer is None:
            self._timer = self.loop.call_at(self.last_data + self.read_timeout, self._check_silence)
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _check_silence(self) -> None:
        due = self.last_data + self.read_timeout
        if self.complete:
            self._timer = None
        elif self.loop.time() >= due:
            self._timer = None
            self.connection.close()
            self.fail(ReadTimeout(f"The engine sent nothing for {self.read_timeout:g} s."))
        else:
            self._timer = self.loop.call_at(due, self._check_silence)

    async def _headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    def _take_buffer(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        if self._paused and self.connection.transport is not None:
            self._paused = False
            self.connection.transport.resume_reading()
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; ``TooLarge`` past ``limit`` bytes (said by its length, or once that much came)."""
        length = self.headers.get(b"content-length", b"")
        if limit is not None and length.isdigit() and int(length) > limit:
            raise TooLarge(f"The body is {int(length)} bytes, over {limit}.")
        parts: list[bytes] = []
        size = 0
        # Taken as it comes, not once complete: past HIGH_WATER the socket stops being read until it is.
        # (No async generator: this is every non-streamed answer's path, most often one piece.)
        while True:
            if self._buffer:
                piece = self._take_buffer()
                size += len(piece)
                if limit is not None and size > limit:
                    raise TooLarge(f"The body is over {limit} bytes.")
                parts.append(piece)
            elif self.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            else:
                await self._wait()

    async def chunks(self):
        """The body as it comes: each piece read from the socket since the last one (never empty)."""
        while True:
            if self._buffer:
                yield self._take_buffer()
            elif self.complete:
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Give the connection back to the pool when the response came whole and it may be reused; close it
        otherwise (a response not read to its end leaves bytes on it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connection = self.connection
        if connection.response is not self:
            return
        connection.response = None
        if self.complete and self.keep_alive and self._error is None and not connection.closed:
            connection.pool.give_back(connection)
        else:
            connection.close()


class Upstream:
    """Connections to every engine, keyed by host and port; as many per engine as requests in flight."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, keepalive: float = 60.0):
        self.connect_timeout, self.read_timeout, self.keepalive = connect_timeout, read_timeout, keepalive
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._closed = False

    async def post(
        self, base_url: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Response:
        """Send ``body`` to ``base_url + path``; the response once its status line and headers came."""
        host, port, host_header = self._address(base_url)
        connection = self._pooled((host, port)) or await self._connect((host, port))
        response = connection.response = Response(connection, self.read_timeout)
        connection.parser = httptools.HttpResponseParser(connection)
        head = [b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", host_header]
        head.append(b"\r\nContent-Length: %d\r\n" % len(body))
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head += (b"\r\n", body)
        try:
            connection.transport.write(b"".join(head))  # type: ignore[union-attr]
            await response._headers()
        except BaseException:
            response.release()
            raise
        return response

    def give_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            return
        self._idle.setdefault(connection.address, []).append(connection)
        connection.idle_timer = asyncio.get_running_loop().call_later(
            self.keepalive, self._expire, connection
        )

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def forget(self, connection: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.get(connection.address, []).remove(connection)

    def _expire(self, connection: _Connection) -> None:
        connection.idle_timer = None
        self.forget(connection)
        connection.close()

    def _pooled(self, address: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed
            connection._cancel_idle()
            if not connection.closed:
                return connection
        return None

    async def _connect(self, address: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, address), *address), self.connect_timeout
            )
        except TimeoutError:
            raise ConnectFailed(f"Connecting to {address[0]}:{address[1]} timed out.") from None
        except OSError as exc:
            raise ConnectFailed(f"Cannot connect to {address[0]}:{address[1]}: {exc}") from None
        return connection

    def _address(self, base_url: str) -> tuple[str, int, bytes]:
        found = self._addresses.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"Engines are reached over plain HTTP inside the cluster, not {base_url!r}.")
            port, host = parts.port or 80, parts.hostname
            named = f"[{host}]" if ":" in host else host  # an IPv6 address is bracketed in the Host header
            found = self._addresses[base_url] = (host, port, f"{named}:{port}".encode())
        return found

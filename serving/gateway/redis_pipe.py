"""The gateway's connection to Redis on its hot path: one connection per process that every request
pipelines on.

Redis answers a connection's commands in order, so a request writes its commands at once and waits for
the next replies due to it: concurrent requests pipeline by themselves, with no pool, lock or client
object per call. redis-py's asyncio client spent about 0.3 ms of CPU per request on the gateway's two
round trips (admission, then settlement with the usage event): half of the gateway's own cost.

Replies come back as values, error replies included (as ``ResponseError``), as from a redis-py pipeline
with ``raise_on_error=False``. A lost connection fails what was waiting on it and is opened again by the
next call; a reply overdue by ``reply_timeout`` closes the connection (Redis answers in microseconds, so
that means a hung server or a broken network, not a slow command).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple  # ("INCRBY", "key", 3): a name and its arguments, as str, bytes, int or float


def connect(url: str, client=None, *, reply_timeout: float = 5.0) -> RedisPipe | ClientPipe:
    """The lean connection for ``redis://`` and ``unix://``; redis-py's client for the rest (TLS)."""
    if url.startswith(("redis://", "unix://")):
        return RedisPipe(url, reply_timeout=reply_timeout)
    if client is None:
        import redis.asyncio as aioredis

        return ClientPipe(aioredis.Redis.from_url(url), owned=True)
    return ClientPipe(client)


def pack(commands) -> bytes:
    """Commands in Redis's wire protocol (RESP): str, bytes, int and float arguments, as redis-py sends them."""
    try:
        return b"".join([hiredis.pack_command(command) for command in commands])
    except TypeError as exc:  # a bool or None: redis-py refuses them too
        raise DataError(f"Invalid Redis command argument in {commands!r}: {exc}") from None


class _Waiter:
    __slots__ = ("due", "future", "replies", "since")

    def __init__(self, future: asyncio.Future, due: int):
        self.future, self.due, self.since = future, due, time.monotonic()
        self.replies: list = []


class _Protocol(asyncio.Protocol):
    """Replies are matched to waiters in the order the commands were written."""

    def __init__(self):
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[_Waiter] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def send(self, commands) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiter(future, len(commands)))
        self.transport.write(pack(commands))  # type: ignore[union-attr]
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                waiter = self.waiting[0]
                waiter.replies.append(reply)
                waiter.due -= 1
                if not waiter.due:
                    self.waiting.popleft()
                    if not waiter.future.done():
                        waiter.future.set_result(waiter.replies)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.abort(RedisConnectionError(f"Bad reply from Redis: {exc!r}"))

    def connection_lost(self, exc) -> None:
        self._fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}"))

    def abort(self, error: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft().future
            if not future.done():
                future.set_exception(error)


class RedisPipe:
    """One pipelined connection to Redis, shared by every request of the process."""

    def __init__(self, url: str, *, reply_timeout: float = 5.0):
        self.options = parse_url(url)
        self.reply_timeout = reply_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None
        self._watchdog: asyncio.Task | None = None

    async def execute(self, *commands: Command) -> list:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.send(commands)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:  # one connection attempt however many requests wait for it
            self._connecting = asyncio.ensure_future(self._open())
        attempt = self._connecting
        try:
            return await asyncio.shield(attempt)
        finally:
            if attempt.done() and self._connecting is attempt:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop, options = asyncio.get_running_loop(), self.options
        timeout: float | None = options.get("socket_connect_timeout") or self.reply_timeout  # type: ignore[assignment]
        try:
            if "path" in options:
                connecting = loop.create_unix_connection(_Protocol, options["path"])
            else:
                connecting = loop.create_connection(
                    _Protocol, options.get("host", "localhost"), int(options.get("port", 6379))
                )
            _, protocol = await asyncio.wait_for(connecting, timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"Cannot connect to Redis: {exc!r}") from exc
        hello: list[Command] = []
        if options.get("password"):
            hello.append(
                ("AUTH", *([options["username"]] if options.get("username") else []), options["password"])
            )
        if int(options.get("db") or 0):
            hello.append(("SELECT", int(options["db"])))
        if hello:
            for reply in await asyncio.wait_for(protocol.send(hello), timeout):
                if isinstance(reply, Exception):
                    protocol.abort(reply)
                    raise reply
        self._protocol = protocol
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch())
        return protocol

    async def _watch(self) -> None:
        """Close the connection when its oldest reply is overdue: every request waiting on it fails fast
        instead of hanging, and the next call connects afresh."""
        period = max(0.05, self.reply_timeout / 4)
        while True:
            await asyncio.sleep(period)
            protocol = self._protocol
            overdue = (
                protocol is not None
                and protocol.waiting
                and not protocol.closed
                and time.monotonic() - protocol.waiting[0].since > self.reply_timeout
            )
            if overdue and protocol is not None:  # (overdue implies it; said again for the type checker)
                protocol.abort(RedisTimeoutError(f"Redis did not answer within {self.reply_timeout:g}s"))


class ClientPipe:
    """The same interface over redis-py's client, for URLs the lean connection does not speak (TLS)."""

    def __init__(self, client, *, owned: bool = False):
        self.client, self.owned = client, owned

    async def execute(self, *commands: Command) -> list:
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)

    async def close(self) -> None:
        if self.owned:
            with contextlib.suppress(Exception):
                await self.client.aclose()

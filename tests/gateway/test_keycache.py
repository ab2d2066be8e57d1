"""The gateway's key cache against a pre-auth flood: malformed ids never reach the database, unknown ids
are looked up once and remembered briefly, memory is bounded, and key loads run on their own threads so a
busy default executor (the routing refresh's) cannot hold them up."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.gateway import keycache
from serving.gateway import services as key_services
from serving.gateway.keycache import KeyCache
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """The key ids the cache read from the database, in order (the real load runs)."""
    seen: list[str] = []
    real = keycache.load

    def load(key_id: str):
        seen.append(key_id)
        return real(key_id)

    monkeypatch.setattr(keycache, "load", load)
    return seen


def run(coroutine):
    return asyncio.run(coroutine)


def unknown(i: int) -> str:
    return f"slm_{i:012d}_{'s' * 43}"


@pytest.mark.parametrize(
    "presented",
    [
        "slm_ａｂｃｄｅｆｇｈｉｊｋｌ_" + "s" * 43,  # full-width letters: alphanumeric to str.isalnum()
        "slm_abcdéfghijkl_" + "s" * 43,
        "slm_ABCDEFGHIJKL_" + "s" * 43,
        "slm_abcdefghijk'_" + "s" * 43,
        "slm_abcdefghijkl_short",
        "slm_abcdefghijkl_" + "s" * 43 + "\u00ff",
        "slm_abcdefghijkl_" + "s" * 300,
    ],
)
def test_a_malformed_or_non_ascii_key_is_refused_before_any_lookup(lookups, presented):
    assert run(KeyCache().authenticate(presented)) is None
    assert lookups == []


class CacheClock:
    """The key cache's clock, moved by the test: ``monotonic`` (what entries expire by) stands still until
    the test advances it, so a test descheduled a while cannot see an entry expire early. ``time`` (keys'
    expiry dates, a load's month) stays the real one."""

    def __init__(self):
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


def test_an_unknown_key_id_is_looked_up_once_and_remembered_briefly(lookups, monkeypatch):
    clock = CacheClock()
    monkeypatch.setattr(keycache, "time", clock)

    async def main(cache: KeyCache):
        first = await asyncio.gather(*[cache.authenticate(unknown(1)) for _ in range(20)])
        clock.now += keycache.NEGATIVE_TTL - 0.1
        again = await cache.authenticate(unknown(1))  # still remembered, just before it expires
        clock.now += 0.2
        later = await cache.authenticate(unknown(1))
        return first, again, later

    first, again, later = run(main(KeyCache()))
    assert first == [None] * 20 and again is None and later is None
    assert lookups == ["000000000001", "000000000001"], "one load for 21 calls, another once it expired"


def test_unknown_ids_cannot_push_known_keys_out_and_memory_stays_bounded(lookups, org, team):
    _, secret = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")

    async def main(cache: KeyCache):
        assert await cache.authenticate(secret) is not None
        for i in range(200):
            await cache.authenticate(unknown(i))
        return await cache.authenticate(secret), len(cache)

    record, size = run(main(KeyCache(16, negative_size=32)))
    assert record is not None and record.team_id == team.pk
    assert size <= 16 + 32
    assert lookups.count(secret.split("_")[1]) == 1, "the known key stayed cached through the flood"


def test_known_keys_beyond_the_size_are_dropped_least_recently_used_first(lookups, org, team):
    secrets = [
        key_services.create_key(actor=actor_for(org["owner"]), team=team, name=f"k{i}")[1] for i in range(4)
    ]

    async def main(cache: KeyCache):
        for secret in secrets[:3]:
            await cache.authenticate(secret)
        await cache.authenticate(secrets[0])  # used again: now the most recent
        await cache.authenticate(secrets[3])  # pushes out the least recently used: secrets[1]
        lookups.clear()
        for secret in (secrets[0], secrets[2], secrets[3], secrets[1]):
            await cache.authenticate(secret)

    run(main(KeyCache(3)))
    assert lookups == [secrets[1].split("_")[1]]


def test_key_loads_do_not_wait_for_a_busy_default_executor(org, team):
    _, secret = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    release = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        stuck = loop.run_in_executor(None, release.wait, 10)  # what a slow routing refresh does to it
        started = time.monotonic()
        try:
            record = await asyncio.wait_for(KeyCache().authenticate(secret), 5)
        finally:
            release.set()
            await stuck
        return record, time.monotonic() - started

    record, elapsed = run(main())
    assert record is not None and elapsed < 5


def test_distinct_unknown_ids_do_not_each_cost_a_database_connection(monkeypatch):
    """Made-up key ids of an unauthenticated flood: every load opened (and closed) a connection of its own."""
    from django.db.backends.signals import connection_created

    from serving.gateway import key_loaders

    monkeypatch.setattr(
        key_loaders, "IDLE_CLOSE_SECONDS", 30.0
    )  # no thread idles that long between loads here

    opened = []

    def count(sender, connection, **kwargs):
        opened.append(threading.get_ident())

    async def main(cache: KeyCache):
        for i in range(30):
            assert await cache.authenticate(unknown(1000 + i)) is None

    connection_created.connect(count)
    try:
        run(main(KeyCache(loaders=2)))
    finally:
        connection_created.disconnect(count)
    assert len(opened) <= 2, f"{len(opened)} connections for 30 loads on 2 loader threads"


def test_loader_threads_close_their_connections_once_idle(monkeypatch):
    """An idle gateway holds no connection for its key loads (as when each load closed its own)."""
    from django.db import connection

    from serving.gateway import key_loaders

    monkeypatch.setattr(key_loaders, "IDLE_CLOSE_SECONDS", 1.0)

    def loaders_sessions() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query LIKE 'SELECT %% FROM \"gateway_apikey\"%%'"
            )
            return cursor.fetchone()[0]

    async def main(cache: KeyCache):
        for i in range(5):
            assert await cache.authenticate(unknown(2000 + i)) is None

    cache = KeyCache(loaders=2)  # kept: once it is gone its threads end, closing their connections
    run(main(cache))
    during = loaders_sessions()
    time.sleep(3)
    assert during >= 1 and loaders_sessions() == 0


def test_a_flood_of_distinct_unknown_ids_is_refused_past_the_pending_limit(monkeypatch):
    monkeypatch.setattr(keycache, "MAX_PENDING", 4)
    gate = threading.Event()
    monkeypatch.setattr(keycache, "load", lambda key_id: gate.wait(5) and None)

    async def main(cache: KeyCache):
        waiting = [asyncio.ensure_future(cache.authenticate(unknown(i))) for i in range(4)]
        await asyncio.sleep(0.1)
        with pytest.raises(keycache.LookupBusy):
            await cache.authenticate(unknown(99))
        gate.set()
        return await asyncio.gather(*waiting)

    assert run(main(KeyCache())) == [None] * 4


def test_a_change_committed_while_its_key_loads_is_not_hidden_by_the_stale_load(monkeypatch, org, team):
    """The load reads the row, the change commits and its eviction arrives, then the load ends: it must not
    cache the row it read, or the old addresses would hold for ``TTL`` seconds."""
    key, secret = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    read, release = threading.Event(), threading.Event()
    seen: list[str] = []
    real = keycache.load

    def load(key_id: str):
        seen.append(key_id)
        record = real(key_id)
        if len(seen) == 1:
            read.set()
            release.wait(5)
        return record

    monkeypatch.setattr(keycache, "load", load)

    def narrow() -> None:
        from django.db import connection

        try:
            key_services.update_key(actor=actor_for(org["owner"]), key=key, allowed_ips=["10.0.0.0/8"])
        finally:
            connection.close()

    async def main(cache: KeyCache):
        loading = asyncio.ensure_future(cache.authenticate(secret))
        assert await asyncio.to_thread(read.wait, 5)
        await asyncio.to_thread(narrow)
        cache.evict(key.key_id)  # what listen_for_invalidations does with the message the commit published
        release.set()
        await loading
        return await cache.authenticate(secret)

    record = run(main(KeyCache()))
    assert seen == [key.key_id, key.key_id], "the next request loaded the key again"
    assert record is not None and not record.allows_ip("192.0.2.1") and record.allows_ip("10.1.2.3")


def test_a_request_that_goes_away_does_not_cancel_the_load_others_wait_for(monkeypatch):
    """The first request for a key starts its load; when its client hangs up, the requests waiting on the
    same load still get their answer, not a cancellation."""
    gate = threading.Event()
    monkeypatch.setattr(keycache, "load", lambda key_id: gate.wait(5) and None)

    async def main(cache: KeyCache):
        first = asyncio.ensure_future(cache.authenticate(unknown(1)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(cache.authenticate(unknown(1)))
        await asyncio.sleep(0.05)
        first.cancel()  # its client hung up
        gate.set()
        return await second

    assert run(main(KeyCache())) is None


def test_a_load_an_eviction_detached_still_counts_against_the_pending_limit(monkeypatch):
    """Evicting a key while it loads detaches the load (it caches nothing), but it still runs on the
    loaders: a flood of evictions must not let more than MAX_PENDING loads pile up."""
    monkeypatch.setattr(keycache, "MAX_PENDING", 2)
    gate = threading.Event()
    monkeypatch.setattr(keycache, "load", lambda key_id: gate.wait(5) and None)

    async def main(cache: KeyCache):
        waiting = [asyncio.ensure_future(cache.authenticate(unknown(i))) for i in range(2)]
        await asyncio.sleep(0.05)
        cache.evict(f"{1:012d}")
        with pytest.raises(keycache.LookupBusy):
            await cache.authenticate(unknown(99))
        gate.set()
        return await asyncio.gather(*waiting)

    assert run(main(KeyCache())) == [None, None]

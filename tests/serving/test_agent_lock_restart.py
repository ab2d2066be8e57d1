"""A node agent restarted in its container (no init: the agent is pid 1 again, on the same hostname) reconciles at
once: its predecessor's reconcile lock names the same host and pid, but a process that no longer runs. Waiting
out the lock's timeout (ten minutes) would leave replicas whose engines died with the container READY, routed
to and billed."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
import redis
from django.conf import settings as django_settings

from portfolio import leases
from serving import agent, agent_lock
from serving.choices import PoolKind
from serving.models import ComputePool

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection


def lock_key(name: str) -> str:
    return f"portfolio:lease:node-reconcile:{name}"


@pytest.fixture
def client():
    return redis.Redis.from_url(django_settings.REDIS_URL)


@pytest.fixture
def reconciles(settings, monkeypatch):
    settings.NODE_POOL = "cpu-pool"
    settings.NODE_ADDRESS = "127.0.0.1"
    ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)
    passes = []
    monkeypatch.setattr(agent, "reconcile_node", lambda name, **options: passes.append((name, options)))
    return passes


def test_a_restarted_agent_reconciles_at_once_past_its_predecessors_lock(client, reconciles):
    # The agent before the restart: the same host and pid as this one (pid 1 in both), started earlier.
    client.set(lock_key("restarted"), f"{socket.gethostname()}:{os.getpid()}:1:previous", ex=600)
    try:
        assert agent.heartbeat("restarted", agent_start=True) is True
        assert reconciles == [("restarted", {"agent_start": True, "lock": reconciles[0][1]["lock"]})]
        assert client.get(lock_key("restarted")) is None  # released after the pass
    finally:
        client.delete(lock_key("restarted"))


def test_a_predecessor_with_the_same_pid_from_before_tokens_named_start_times_is_gone_too(client, reconciles):
    client.set(lock_key("upgraded"), f"{socket.gethostname()}:{os.getpid()}:previous", ex=600)
    try:
        assert agent.heartbeat("upgraded", agent_start=True) is True
        assert len(reconciles) == 1
    finally:
        client.delete(lock_key("upgraded"))


def test_a_lock_this_agent_could_not_release_does_not_keep_its_next_heartbeat_waiting(client, monkeypatch):
    lock = agent_lock.acquire_node_lock("blip")
    assert lock is not None
    try:

        def redis_away(*args, **kwargs):
            raise redis.ConnectionError("Redis away for a moment")

        with monkeypatch.context() as patched:
            patched.setattr(lock._client, "eval", redis_away)
            with contextlib.suppress(redis.ConnectionError):
                lock.release()  # as heartbeat's ``finally`` does
        assert client.get(lock_key("blip")).decode() == lock.token  # left behind
        again = agent_lock.acquire_node_lock("blip")
        assert again is not None and again.holder() == again.token
        again.release()
    finally:
        client.delete(lock_key("blip"))


def test_a_lock_another_reconcile_of_this_process_holds_is_still_respected():
    first = agent_lock.acquire_node_lock("busy")
    try:
        assert first is not None
        assert first.token in leases._taken_here
        assert agent_lock.acquire_node_lock("busy") is None
    finally:
        first.release()

"""The node's reconcile lock: one reconcile at a time, but an agent killed mid-reconcile does not keep the
next agent on the machine waiting for the lock to time out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import redis
from django.conf import settings

from portfolio.leases import Lease
from serving import agent_lock


def lock_key(name: str) -> str:
    return f"portfolio:lease:node-reconcile:{name}"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_lock_held_by_a_running_process_is_respected():
    """Held by a lease of a live process (this one: a token naming this process that no lease here holds is a
    predecessor's with the same pid, tests/serving/test_agent_lock_restart.py)."""
    held = Lease("node-reconcile:n-live")
    assert held.acquire(wait=False)
    try:
        assert agent_lock.acquire_node_lock("n-live") is None
    finally:
        held.release()


def test_a_lock_left_by_a_killed_agent_of_this_machine_is_taken_over():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(lock_key("n-dead"), f"{socket.gethostname()}:{dead_pid()}:abc", ex=600)
    try:
        lock = agent_lock.acquire_node_lock("n-dead")
        assert lock is not None
        assert client.get(lock_key("n-dead")).decode().startswith(f"{socket.gethostname()}:{os.getpid()}:")
        lock.release()
        assert not client.exists(lock_key("n-dead"))
    finally:
        client.delete(lock_key("n-dead"))


def test_a_lock_of_another_machine_is_left_to_time_out():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(lock_key("n-other"), f"elsewhere.example:{dead_pid()}:abc", ex=600)
    try:
        assert agent_lock.acquire_node_lock("n-other") is None
    finally:
        client.delete(lock_key("n-other"))


def test_only_one_of_two_callers_gets_a_free_lock():
    first, second = agent_lock.acquire_node_lock("n-free"), agent_lock.acquire_node_lock("n-free")
    try:
        assert first is not None and second is None, "the second caller is this very (live) process"
    finally:
        first.release()

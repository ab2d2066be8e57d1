"""A lease's holder is alive only while the very process that took it runs: a pid reused by another process (a
restarted container runs its new process as pid 1 again) does not keep a dead holder's lease (real Redis)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from portfolio import leases
from portfolio.leases import Lease

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def name() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def holder(name):
    """Another live process of this host holding the lease ``name``, until it is told to exit."""
    code = (
        "import sys, django; django.setup(); from portfolio.leases import Lease; "
        f"lease = Lease({name!r}, 300); assert lease.acquire(wait=False); print(lease.token, flush=True); "
        "sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        process.token = process.stdout.readline().strip()
        assert process.token, "the holder did not start"
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def test_the_lease_of_a_live_process_of_this_host_is_respected(name, holder):
    assert not Lease(name, seconds=300).acquire(wait=False)


def test_a_lease_whose_pid_now_names_another_process_is_taken_over_at_once(name, holder):
    """The token names the live holder's host and pid, but a start time of an earlier process with that pid."""
    host, pid, started, rest = holder.token.split(":")
    assert started == leases._started(int(pid))
    successor = Lease(name, seconds=300)
    successor._client.set(successor.key, f"{host}:{pid}:{int(started) - 1}:{rest}", px=300_000)
    started_at = time.monotonic()
    assert successor.acquire(wait=False)
    assert time.monotonic() - started_at < 3  # not one expiry (300 s) waited out
    successor.release()


def test_a_lease_of_another_host_is_left_to_its_expiry(name):
    successor = Lease(name, seconds=1)
    successor._client.set(successor.key, "elsewhere.example:1:1:abc", px=300_000)
    try:
        assert not successor.acquire(wait=False)
    finally:
        successor._client.delete(successor.key)

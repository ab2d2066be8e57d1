"""Leases on real Redis: one live runner per long task, taken over only from a runner that stopped."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from portfolio.celery import app
from portfolio.leases import Lease

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def name() -> str:
    return f"test:{uuid.uuid4().hex}"


def test_a_second_runner_is_refused_while_the_first_renews_its_lease(name):
    first, second = Lease(name, seconds=1), Lease(name, seconds=1)
    assert first.acquire()
    with first.kept():
        started = time.monotonic()
        assert not second.acquire()
        assert time.monotonic() - started >= 1  # it waited out one expiry: the holder renewed meanwhile
        assert second.holder() == first.token
    assert second.acquire(wait=False)  # released at the end of the block


def test_a_lease_nobody_renews_is_taken_over_once_it_lapses(name):
    stalled, second = Lease(name, seconds=1), Lease(name, seconds=1)
    assert stalled.acquire()
    assert not second.acquire(wait=False)
    assert second.acquire()
    assert second.holder() == second.token
    assert not stalled.renew() and stalled.lost.is_set()


def test_the_lease_of_a_process_of_this_host_that_died_is_taken_over_at_once(name):
    code = f"import os, django; django.setup(); from portfolio.leases import Lease; Lease({name!r}, 300).acquire(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    successor = Lease(name, seconds=300)
    assert successor.holder() is not None
    started = time.monotonic()
    assert successor.acquire(wait=False)
    assert time.monotonic() - started < 3  # not one expiry (300 s) waited out; a busy runner is slow


def test_only_the_holder_releases_its_lease(name):
    holder, other = Lease(name, seconds=30), Lease(name, seconds=30)
    assert holder.acquire()
    other.release()
    assert other.holder() == holder.token
    holder.release()
    assert other.holder() is None


def test_the_worker_broker_keeps_unacknowledged_tasks_for_the_configured_visibility_timeout(settings):
    assert app.conf.broker_transport_options["visibility_timeout"] == settings.BROKER_VISIBILITY_TIMEOUT
    assert settings.BROKER_VISIBILITY_TIMEOUT >= 24 * 3600

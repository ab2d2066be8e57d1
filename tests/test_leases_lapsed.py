"""A lease that lapsed is never taken back by its old holder: another run may have held it and ended meanwhile
(real Redis)."""

from __future__ import annotations

import time
import uuid

import pytest

from portfolio import leases
from portfolio.leases import Lease


@pytest.fixture
def name() -> str:
    return f"test:{uuid.uuid4().hex}"


def test_a_holder_paused_past_its_lease_while_another_ran_does_not_take_it_back(name):
    paused, other = Lease(name, seconds=1), Lease(name, seconds=1)
    assert paused.acquire()
    time.sleep(1.2)
    assert other.acquire(wait=False)
    other.release()  # ran and ended meanwhile

    assert not paused.renew() and paused.lost.is_set()
    assert paused.holder() is None
    with pytest.raises(leases.LeaseLost):
        paused.ensure_held()


def test_a_lease_unrenewed_for_its_whole_expiry_is_not_held_even_before_renewal_notices(name):
    paused = Lease(name, seconds=0.3)
    assert paused.acquire()
    paused.ensure_held()
    time.sleep(0.4)
    with pytest.raises(leases.LeaseLost):
        paused.ensure_held()


def test_a_lease_that_lapsed_unclaimed_is_not_taken_back_either(name):
    """Nothing tells a lapse nobody used from one another run held and ended: only an unbroken key does."""
    paused = Lease(name, seconds=0.3)
    assert paused.acquire()
    time.sleep(0.6)
    assert not paused.renew() and paused.lost.is_set() and paused.holder() is None


def lapse_while_another_runs(lease_key: str) -> None:
    """What a kept lease sees of its run paused past the expiry while a redelivery took it, ran and released it:
    its key gone. The renewal thread (every third of a second at a 1 s expiry) meets it meanwhile."""
    Lease("unused", seconds=1)._client.delete(lease_key)
    time.sleep(1.0)

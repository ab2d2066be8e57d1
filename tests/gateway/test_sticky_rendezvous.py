"""Sticky assignment by weighted rendezvous hashing: over many keys each route gets its weight's share, and a
route added, removed or reweighted moves only the keys that go to or come from it; no client is switched
between two other variants (a route laid out by name over the total weight moved a quarter of A's and B's
clients when C briefly had no ready replica, and 2.5% between A and B when a 5% canary was added)."""

from __future__ import annotations

from collections import Counter

import pytest

from serving.gateway.routing import Route, sticky_route
from tests.gateway.test_sticky import route

KEYS = [f"client-{i}".encode() for i in range(20_000)]


def assigned(routes: list[Route]) -> list[tuple[str, str]]:
    return [
        (picked.deployment, picked.adapter) for picked in (sticky_route(routes, "support", k) for k in KEYS)
    ]


@pytest.mark.parametrize(
    "weights", [{"arm-a": 1, "arm-b": 1, "arm-c": 1}, {"arm-a": 475, "arm-b": 475, "canary": 50}, {"x": 1}]
)
def test_over_twenty_thousand_keys_each_route_gets_its_weights_share(weights):
    counts = Counter(name for name, _ in assigned([route(n, w) for n, w in weights.items()]))
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(counts[name] / len(KEYS) - weight / total) < 0.01, counts


def test_an_adapter_is_a_variant_of_its_own_beside_its_base():
    counts = Counter(assigned([route("bot", 50), route("bot", 50, adapter="tone")]))
    assert abs(counts[("bot", "tone")] / len(KEYS) - 0.5) < 0.01, counts


def test_duplicate_routes_to_one_deployment_count_their_weights_together():
    counts = Counter(
        name for name, _ in assigned([route("base", 100), route("base", 100), route("canary", 10)])
    )
    assert abs(counts["canary"] / len(KEYS) - 10 / 210) < 0.01, counts


def test_an_arm_that_drops_out_moves_only_its_own_clients():
    three = assigned([route("arm-a", 100), route("arm-b", 100), route("arm-c", 100)])
    two = assigned([route("arm-a", 100), route("arm-b", 100)])
    moved = [(before, after) for before, after in zip(three, two, strict=True) if before != after]
    assert moved and all(before[0] == "arm-c" for before, _ in moved)
    assert three.count(("arm-c", "")) == len(moved), "every client of C moves, and no one else"


def test_a_canary_added_takes_clients_only_to_itself():
    ab = assigned([route("arm-a", 50), route("arm-b", 50)])
    with_canary = assigned([route("arm-a", 475), route("arm-b", 475), route("canary", 50)])
    moved = [after for before, after in zip(ab, with_canary, strict=True) if before != after]
    assert moved and all(after[0] == "canary" for after in moved), "no one switched between A and B"
    assert abs(len(moved) / len(KEYS) - 0.05) < 0.01


def test_a_reweighted_arm_gains_clients_only_from_the_others():
    even = assigned([route("arm-a", 50), route("arm-b", 50), route("arm-c", 50)])
    heavier = assigned([route("arm-a", 100), route("arm-b", 50), route("arm-c", 50)])
    moved = [(before, after) for before, after in zip(even, heavier, strict=True) if before != after]
    assert moved and all(after[0] == "arm-a" and before[0] != "arm-a" for before, after in moved)

"""Sticky A/B assignment: a stable hash of the caller's key id, or of a request header's value, picks the
route over the weights, so one client keeps one variant while over many clients each variant gets its
weight's share; without the header the pick stays random by weight. Then through a real gateway."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from serving.gateway.routing import (
    EndpointInfo,
    ReplicaInfo,
    Route,
    Snapshot,
    choose_route,
    sticky_key,
    sticky_route,
)
from serving.models import Endpoint, EndpointRoute
from tests.gateway.conftest import wait_for_model


def route(deployment: str, weight: int, adapter: str = "") -> Route:
    return Route(
        weight=weight,
        deployment=deployment,
        upstream_model=adapter or deployment,
        adapter=adapter,
        version_id=1,
    )


def endpoint(*routes: Route, sticky_by: str = "none", header: bytes = b"") -> EndpointInfo:
    return EndpointInfo(
        name="support",
        team_id=1,
        routes=routes,
        fallback=None,
        input_micros_per_token=0,
        output_micros_per_token=0,
        max_model_len=512,
        sticky_by=sticky_by,
        sticky_header=header,
    )


SNAPSHOT = Snapshot(
    replicas={name: [ReplicaInfo(1, "http://x", b"")] for name in ("base", "canary", "other")}
)


def test_one_key_always_gets_the_same_route():
    routes = [route("base", 95), route("canary", 5)]
    for client in (b"user-1", b"user-2", b"key-abc", b"\xff\x00"):
        picks = {sticky_route(routes, "support", client) for _ in range(50)}
        assert len(picks) == 1


@pytest.mark.parametrize("weights", [(95, 5), (50, 50), (9000, 1000), (1, 1, 2)])
def test_over_many_keys_each_route_gets_its_weights_share(weights):
    routes = [route(name, weight) for name, weight in zip(("base", "canary", "other"), weights, strict=False)]
    total, clients = sum(weights), 20_000
    counts = Counter(
        sticky_route(routes, "support", f"client-{i}".encode()).deployment for i in range(clients)
    )
    for r in routes:
        assert abs(counts[r.deployment] / clients - r.weight / total) < 0.02, counts


def test_the_order_of_the_routes_does_not_change_a_clients_variant():
    # The routing table orders routes by weight: a weight change must not reshuffle who sees what.
    routes = [route("base", 50), route("canary", 50)]
    for i in range(200):
        key = f"client-{i}".encode()
        assert sticky_route(routes, "support", key) == sticky_route(routes[::-1], "support", key)


def test_a_growing_canary_keeps_its_clients():
    """Clients on the canary at 5% are still on it at 50%: the layout only moves the boundary."""
    small = [route("base", 95), route("canary", 5)]
    large = [route("base", 50), route("canary", 50)]
    on_canary = [
        key
        for i in range(5000)
        if sticky_route(small, "support", (key := f"c{i}".encode())).deployment == "canary"
    ]
    assert on_canary and all(sticky_route(large, "support", key).deployment == "canary" for key in on_canary)


def test_the_endpoint_salts_the_assignment():
    routes = [route("base", 50), route("canary", 50)]
    keys = [f"c{i}".encode() for i in range(400)]
    same = sum(sticky_route(routes, "a", k) == sticky_route(routes, "b", k) for k in keys)
    assert 120 < same < 280, "about half agree: one endpoint's variant says nothing of another's"


def test_sticky_key_by_api_key_by_header_and_none():
    routes = (route("base", 50), route("canary", 50))
    assert sticky_key(endpoint(*routes), "key1", {b"x-user": b"u"}) == b""
    assert sticky_key(endpoint(*routes, sticky_by="api_key"), "key1", {}) == b"key1"
    by_header = endpoint(*routes, sticky_by="header", header=b"x-user")
    assert sticky_key(by_header, "key1", {b"x-user": b"u-42"}) == b"u-42"
    assert sticky_key(by_header, "key1", {}) == b"", "no header: random by weight"
    assert len(sticky_key(by_header, "k", {b"x-user": b"u" * 10_000})) == 256, "a long value is bounded"


def test_choose_route_uses_the_sticky_key_and_skips_routes_without_replicas():
    info = endpoint(route("base", 50), route("canary", 50), route("gone", 50), sticky_by="api_key")
    for i in range(100):
        key = f"k{i}".encode()
        picks = {choose_route(info, SNAPSHOT, sticky=key).deployment for _ in range(10)}
        assert len(picks) == 1 and picks <= {"base", "canary"}
    random_picks = {choose_route(info, SNAPSHOT).deployment for _ in range(200)}
    assert random_picks == {"base", "canary"}, "without a key: random by weight"


# --- Through a real gateway ------------------------------------------------------------------------------
def chat(base: str, secret: str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "ab", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        headers={"Authorization": f"Bearer {secret}", **(headers or {})},
        timeout=20,
    )


@pytest.mark.django_db(transaction=True)
def test_the_gateway_keeps_one_client_on_one_variant_by_header(gateway_url, stack):
    first, (engine_a,) = stack["deployment"]("ab-first")
    second, (engine_b,) = stack["deployment"]("ab-second")
    ab = stack["endpoint"]("ab", first)
    EndpointRoute.objects.filter(endpoint=ab).update(weight=50)
    EndpointRoute.objects.create(endpoint=ab, deployment=second, weight=50)
    Endpoint.objects.filter(pk=ab.pk).update(sticky_by="header", sticky_header="x-user")
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "ab")  # the table that lists it has its routes and setting too
    for user in ("alice", "bob", "carol", "dave"):
        before = (len(engine_a.requests), len(engine_b.requests))
        for _ in range(4):
            assert chat(gateway_url, secret, {"X-User": user}).status_code == 200
        grew = (len(engine_a.requests) - before[0], len(engine_b.requests) - before[1])
        assert sorted(grew) == [0, 4], f"{user} saw one variant: {grew}"
    for i in range(30):
        assert chat(gateway_url, secret, {"X-User": f"user-{i}"}).status_code == 200
    assert engine_a.requests and engine_b.requests, "over many users both variants answer"

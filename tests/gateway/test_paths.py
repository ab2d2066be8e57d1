"""The gateway's own paths (serving/gateway/paths.py): found by method and path, then by prefix, each once."""

from __future__ import annotations

import pytest

from serving.gateway.app import routes
from serving.gateway.paths import ANY, Routes


async def _one(*args) -> None:
    pass


async def _other(*args) -> None:
    pass


def test_a_route_is_found_by_its_method_and_path_and_nothing_else_is():
    table = Routes()
    table.add("POST", "/v1/things", _one)
    assert table.find("POST", "/v1/things") is _one
    assert table.find("GET", "/v1/things") is None
    assert table.find("POST", "/v1/things/x") is None


def test_a_route_open_to_any_method_and_a_prefix_route_are_found_after_the_exact_ones():
    table = Routes()
    table.add(ANY, "/metrics", _one)
    table.add("GET", "/v1/things/", _other, prefix=True)
    table.add("GET", "/v1/things/special", _one)
    assert table.find("DELETE", "/metrics") is _one
    assert table.find("GET", "/v1/things/special") is _one
    assert table.find("GET", "/v1/things/x") is _other
    assert table.find("POST", "/v1/things/x") is None


@pytest.mark.parametrize("prefix", [False, True])
def test_a_path_routed_twice_is_refused(prefix):
    table = Routes()
    table.add("GET", "/v1/things", _one, prefix=prefix)
    with pytest.raises(ValueError, match="routed already"):
        table.add("GET", "/v1/things", _other, prefix=prefix)


def test_the_gateway_serves_the_openai_paths_and_its_metrics():
    table = routes()
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/rerank"),
        ("POST", "/v1/score"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/audio/translations"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/some-endpoint"),
        ("GET", "/metrics"),
    ]:
        assert table.find(method, path) is not None, (method, path)
    assert table.find("GET", "/v1/chat/completions") is None
    assert table.find("POST", "/v1/models") is None
    assert table.find("GET", "/v1/audio/transcriptions") is None

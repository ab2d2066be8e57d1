"""The serving benchmark's load: what it sends an engine and how it counts (against a loopback stand-in)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.serving import load


@pytest.fixture
def engine():
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({**body, "authorization": self.headers["Authorization"]})
            answer = json.dumps(
                {
                    "choices": [{"text": f"{body['model']}!"}],
                    "usage": {"completion_tokens": body["max_tokens"]},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_throughput_counts_the_measured_waves_and_spreads_requests_over_the_models(engine):
    url, seen = engine
    result = load.throughput(
        url, "engine-key", ["a1", "a2", "a3", "a4"], concurrency=8, waves=2, max_tokens=5, warm_up=1
    )
    assert (result.requests, result.completion_tokens) == (16, 80)  # the warm-up wave is not counted
    assert result.tokens_per_second == pytest.approx(80 / result.seconds)
    assert len(seen) == 24
    assert Counter(request["model"] for request in seen) == {"a1": 6, "a2": 6, "a3": 6, "a4": 6}
    assert {(r["temperature"], r["ignore_eos"], r["authorization"]) for r in seen} == {
        (0, True, "Bearer engine-key")
    }


def test_greedy_answers_are_asked_at_temperature_zero_in_prompt_order(engine):
    url, seen = engine
    assert load.greedy_answers(url, "k", "merged", ["one", "two"]) == ["merged!", "merged!"]
    assert [(r["prompt"], r["temperature"]) for r in seen] == [("one", 0), ("two", 0)]

"""A stand-in for the platform's gateway on loopback (a real HTTP server), for the jobs that call it
(distillation's teacher, an eval run's rows): each chat completion gets what ``reply(prompt, count)`` says
for the ``count``-th call of its prompt (the last message's content), and every call is counted."""

from __future__ import annotations

import http.server
import json
import threading
from collections import Counter
from collections.abc import Callable

import pytest

# (status, headers, body), or None: the connection is dropped unanswered.
Reply = tuple[int, dict, dict] | None


class Gateway:
    def __init__(self, reply: Callable[[str, int], Reply]):
        self.calls: Counter[str] = Counter()
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the standard library's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                gateway.calls[prompt] += 1
                answer = reply(prompt, gateway.calls[prompt])
                if answer is None:
                    self.close_connection = True  # no status line: the client meets a dropped connection
                    return
                status, headers, payload = answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in_gateway(settings):
    """Starts a ``Gateway`` answering ``reply`` and points the platform's jobs at it; stopped after the test."""
    started: list[Gateway] = []

    def start(reply: Callable[[str, int], Reply]) -> Gateway:
        server = Gateway(reply)
        started.append(server)
        settings.GATEWAY_INTERNAL_URL = server.url
        return server

    yield start
    for server in started:
        server.close()

"""A webhook receiver for the budget alert tests: a real HTTP(S) server on a free port of 127.0.0.1."""

from __future__ import annotations

import http.server
import ssl
import threading

import pytest


class Receiver:
    """A real HTTP(S) server on a free port of 127.0.0.1 that keeps what it was sent, and answers ``status``
    with ``headers``."""

    def __init__(self, status: int = 204, headers: dict | None = None, tls: ssl.SSLContext | None = None):
        self.received: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="receiver")
def fixture_receiver():
    """A Receiver answering 204, closed after the test (imported by the modules whose tests use it)."""
    server = Receiver()
    yield server
    server.close()

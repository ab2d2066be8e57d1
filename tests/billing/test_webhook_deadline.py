"""A budget webhook's whole call is bounded, not each read: a receiver answering a byte at a time held the
budget check (and every alert and stored spend after it) for as long as it liked (found by review)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from portfolio.billing import webhooks


@pytest.fixture
def drip():
    """A receiver that reads the request, then sends its answer one byte every 0.3 s, for a minute."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
                if stop.wait(0.3):
                    return
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    thread.join(5)
    server.close()


def test_a_receiver_answering_a_byte_at_a_time_is_cut_at_the_deadline(settings, drip):
    settings.BILLING_WEBHOOK_PRIVATE_HOSTS = True
    settings.BILLING_WEBHOOK_TIMEOUT = 1
    began = time.monotonic()
    outcome = webhooks.post(drip, {"event": "budget.alert"})
    took = time.monotonic() - began
    assert outcome == "failed: no whole answer within 1 s"
    assert took < 4, f"held {took:.1f} s"
    assert not [t for t in threading.enumerate() if t.name == "budget-webhook"], "its thread was left blocked"

"""An eval run's rows through a stand-in gateway on loopback (a real HTTP server) that fails a row's first
call with a passing refusal: one 503 or 429 failed the whole run, every row before it billed. The row is
asked again (training.gateway_retries) and the run ends scored; a lasting refusal still fails it."""

from __future__ import annotations

import http.server
import json
import threading
from collections import Counter

import pytest

from tests.training.test_eval_runs import endpoint as endpoint  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import start
from tests.training.test_eval_runs import task as task  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import version as version  # noqa: F401 - the shared fixture
from training import gateway_retries
from training.choices import JobStatus
from training.evals import runs

pytestmark = pytest.mark.django_db


class Gateway(http.server.ThreadingHTTPServer):
    """Answers "billing" to every chat completion; the first call of each row whose ticket contains
    ``flaky`` gets ``status`` first (every call, when ``lasting``)."""

    def __init__(self, status: int, flaky: str, lasting: bool = False):
        self.status, self.flaky, self.lasting = status, flaky, lasting
        self.calls: Counter[str] = Counter()
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Gateway

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ticket = body["messages"][-1]["content"]
        self.server.calls[ticket] += 1
        if self.server.flaky in ticket and (self.server.lasting or self.server.calls[ticket] == 1):
            self._send(self.server.status, {"error": {"message": "busy"}}, {"Retry-After": "0"})
            return
        answer = {
            "choices": [{"message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1},
        }
        self._send(200, answer, {})

    def _send(self, status: int, body: dict, headers: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def gateway_at(settings):
    servers = []

    def serve(status: int, flaky: str, lasting: bool = False) -> Gateway:
        server = Gateway(status, flaky, lasting)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        settings.GATEWAY_INTERNAL_URL = server.url
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [503, 429, 502])
def test_a_row_refused_once_in_passing_is_asked_again_and_the_run_scores(
    engineer, task, endpoint, gateway_at, monkeypatch, status
):
    monkeypatch.setattr(gateway_retries, "BACKOFF_S", 0.05)
    server = gateway_at(status, "Ticket 5:")
    run = start(engineer, task, endpoint, row_limit=30, concurrency=2)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    assert run.rows_done == run.rows_total == 24
    flaky = [ticket for ticket in server.calls if "Ticket 5:" in ticket]
    assert flaky and all(server.calls[ticket] == 2 for ticket in flaky)
    assert sum(server.calls.values()) == 24 + len(flaky)


def test_a_lasting_refusal_still_fails_the_run_after_the_tries(
    engineer, task, endpoint, gateway_at, monkeypatch
):
    monkeypatch.setattr(gateway_retries, "BACKOFF_S", 0.05)
    server = gateway_at(503, "Ticket 5:", lasting=True)
    run = start(engineer, task, endpoint, row_limit=30, concurrency=1)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED
    assert f"router-ep answered 503 ({gateway_retries.TRIES} tries)" in run.status_detail
    assert max(server.calls.values()) == gateway_retries.TRIES

"""An eval run's rows through a stand-in gateway on loopback (a real HTTP server) that fails a row's first
call with a passing refusal: one 503 or 429 failed the whole run, every row before it billed. The row is
asked again (training.gateway_retries) and the run ends scored; a lasting refusal still fails it."""

from __future__ import annotations

import pytest

from tests.training.stand_in_gateway import stand_in_gateway as stand_in_gateway  # noqa: F401 - the fixture
from tests.training.test_eval_runs import endpoint as endpoint  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import start
from tests.training.test_eval_runs import task as task  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import version as version  # noqa: F401 - the shared fixture
from training import gateway_retries
from training.choices import JobStatus
from training.evals import runs

pytestmark = pytest.mark.django_db


ANSWER = {
    "choices": [{"message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1},
}


@pytest.fixture
def gateway_at(stand_in_gateway):
    """A stand-in gateway answering "billing" to every row; the first call of each row whose ticket contains
    ``flaky`` gets ``status`` first (every call, when ``lasting``)."""

    def serve(status: int, flaky: str, lasting: bool = False):
        def reply(ticket: str, count: int):
            if flaky in ticket and (lasting or count == 1):
                return status, {"Retry-After": "0"}, {"error": {"message": "busy"}}
            return 200, {}, ANSWER

        return stand_in_gateway(reply)

    return serve


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

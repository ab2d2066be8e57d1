"""A run whose row is refused while other rows are still being answered (a generation may take minutes) ends
failed with the refusal at once: it does not wait for the calls in flight without beating, which let the
reaper fail it first with "Its worker stopped answering" and lose the real reason."""

from __future__ import annotations

import threading

import pytest

from serving.gateway.models import ApiKey
from tests.training.test_eval_runs import endpoint as endpoint  # noqa: PLC0414 - the fixture, used by name
from tests.training.test_eval_runs import start
from tests.training.test_eval_runs import task as task  # noqa: PLC0414 - the fixture, used by name
from tests.training.test_eval_runs import version as version  # noqa: PLC0414 - the fixture, used by name
from training.choices import JobStatus
from training.evals import gateway, runs
from training.evals.models import EndpointEvalRun

pytestmark = pytest.mark.django_db
REFUSAL = "router-ep answered 400: the prompt is longer than its context"


def test_a_row_refused_beside_slow_ones_fails_the_run_at_once_with_its_reason(
    engineer, task, endpoint, monkeypatch
):
    release = threading.Event()  # the slow generations end when the test says so
    lock = threading.Lock()
    calls: list[int] = []
    answered: list[int] = []

    def ask(client, endpoint_name, messages, max_tokens):
        with lock:
            calls.append(1)
            n = len(calls)
        if n == 1:
            raise gateway.GatewayRefused(REFUSAL)
        release.wait(timeout=10)  # a generation still in flight (up to ~300 s in production)
        answered.append(n)
        return gateway.Answer(text="Billing.", latency_s=0.05, input_tokens=10, output_tokens=2)

    monkeypatch.setattr(gateway, "ask", ask)  # the real client_for: a service key, revoked after
    run = start(engineer, task, endpoint, row_limit=8, concurrency=3)
    try:
        runs.execute(run.pk)
        waited_for = list(answered)
    finally:
        release.set()
    run = EndpointEvalRun.objects.get(pk=run.pk)
    assert waited_for == [], (
        "the run waited for the calls in flight, beating not, before its failure was written"
    )
    assert (run.status, run.status_detail) == (JobStatus.FAILED, REFUSAL)
    assert (run.metrics, run.answers) == ({}, [])
    assert len(calls) <= 4, "the rows not yet sent are not sent (one freed thread may take one up)"
    key = ApiKey.objects.get(name=f"eval run #{run.pk}")
    assert key.revoked_at is not None
    # The calls left in flight end in their threads; the run, ended, keeps its reason.
    for _ in range(100):
        if len(answered) == len(calls) - 1:
            break
        threading.Event().wait(0.05)
    run = EndpointEvalRun.objects.get(pk=run.pk)
    assert (run.status, run.status_detail) == (JobStatus.FAILED, REFUSAL)

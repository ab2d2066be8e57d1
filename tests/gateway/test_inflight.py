"""A gateway process killed mid-request loses no usage event and keeps no reservation: the flusher reaps
its in-flight ledger once its liveness key is gone."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from serving.gateway import inflight, keystate, tasks
from serving.gateway.models import UsageEvent
from tests.gateway.conftest import wait_for_model, wait_settled
from tests.gateway.process import start_gateway, stop_gateway

pytestmark = pytest.mark.django_db(transaction=True)


def ledgers(redis) -> dict[str, int]:
    """Each registered gateway process and the number of requests in its ledger."""
    return {
        m.decode(): redis.hlen(inflight.ledger_key(m.decode())) for m in redis.smembers(inflight.PROCESSES)
    }


def token_budget_used(redis) -> int:
    return sum(int(redis.get(k) or 0) for k in redis.scan_iter("gw:bt:*"))


def test_a_settled_request_leaves_nothing_in_the_ledger(gateway_url, stack):
    dep, _ = stack["deployment"]("settled-dep")
    stack["endpoint"]("settled", dep)
    secret = stack["key"](monthly_token_budget=10_000)
    wait_for_model(gateway_url, secret, "settled")
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "settled", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
    )
    assert response.status_code == 200
    # The answer goes out before the settlement is written: this fails unless the entry leaves the ledger.
    wait_settled()
    assert token_budget_used(keystate.client()) == 13, (
        "the reservation was settled to the engine's 10 + 3 tokens"
    )


def test_a_gateway_killed_mid_stream_leaves_a_lost_event_and_releases_its_reservation(stack, team, tmp_path):
    redis = keystate.client()
    process, base = start_gateway(tmp_path / "doomed-gateway.log")
    try:
        dep, _ = stack["deployment"]("doomed-dep", chunk_delay=0.1)
        stack["endpoint"]("doomed", dep)
        secret = stack["key"](monthly_token_budget=100_000)
        wait_for_model(base, secret, "doomed")
        started = threading.Event()

        def stream() -> None:
            body = {
                "model": "doomed",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 200,
                "stream": True,
            }
            try:
                with httpx.stream(
                    "POST",
                    f"{base}/v1/chat/completions",
                    json=body,
                    timeout=30,
                    headers={"Authorization": f"Bearer {secret}"},
                ) as response:
                    for _ in response.iter_bytes():
                        started.set()
            except httpx.HTTPError:
                pass  # the gateway is killed under it

        client = threading.Thread(target=stream)
        client.start()
        assert started.wait(20), "the stream never began"
        in_flight = [process_id for process_id, count in ledgers(redis).items() if count]
        assert len(in_flight) == 1, "the streaming request is in its gateway's ledger"
        doomed = in_flight[0]
        assert token_budget_used(redis) > 200, "admission reserved the request's upper bound"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        client.join(20)
    finally:
        stop_gateway(process)

    tasks.flush_usage()
    assert not UsageEvent.objects.filter(error=inflight.LOST_ERROR).exists(), (
        "not before its liveness expired"
    )
    redis.delete(inflight.alive_key(doomed))  # what ALIVE_SECONDS of silence does
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not UsageEvent.objects.filter(error=inflight.LOST_ERROR).exists():
        tasks.flush_usage()
        time.sleep(0.1)
    lost = UsageEvent.objects.get(error=inflight.LOST_ERROR)
    assert (lost.status, lost.endpoint, lost.stream, lost.output_tokens) == (502, "doomed", True, 0)
    assert lost.team_id == team.pk and lost.api_key_id is not None
    assert token_budget_used(redis) == 0, "the reservation went back to the key's budget"
    assert doomed not in ledgers(redis) and not redis.exists(inflight.ledger_key(doomed))

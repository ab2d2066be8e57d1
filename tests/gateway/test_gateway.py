"""The gateway with the official openai SDK, in front of a stand-in engine: auth, routing, errors in
OpenAI's shape, streaming, usage metering, limits and budgets under concurrency."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from portfolio.accounts.actor import Actor
from serving.gateway import services as key_services
from serving.gateway import usage
from serving.gateway.models import ApiKey, UsageEvent
from serving.gateway.payloads import CHAT_TEMPLATE_TOKENS
from serving.models import Endpoint, Replica
from tests.gateway.conftest import METRICS_TOKEN, flush_settled, same_minute, wait_for_model

pytestmark = pytest.mark.django_db(transaction=True)


def client(base: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=20)


def test_chat_through_the_sdk_is_routed_metered_and_renamed(gateway_url, stack):
    dep, engines = stack["deployment"]("router-dep")
    stack["endpoint"]("ticket-router", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "ticket-router")
    answer = client(gateway_url, secret).chat.completions.create(
        model="ticket-router", messages=[{"role": "user", "content": "I was charged twice"}], max_tokens=7
    )
    assert answer.model == "ticket-router", "clients see the endpoint name, not the deployment"
    assert answer.usage.completion_tokens == 7
    assert engines[0].requests[-1]["model"] == "router-dep"
    assert flush_settled() == 1
    event = UsageEvent.objects.get()
    assert (event.endpoint, event.deployment, event.input_tokens, event.output_tokens, event.status) == (
        "ticket-router",
        "router-dep",
        10,
        7,
        200,
    )
    assert event.team_id == ApiKey.objects.get().team_id and event.latency_ms >= 0
    # For billing's ledger: the endpoint called and its owners, beside the caller.
    endpoint = Endpoint.objects.select_related("owner_team").get(name="ticket-router")
    assert (event.endpoint_id, event.owner_team_id, event.owner_department_id) == (
        endpoint.pk,
        endpoint.owner_team_id,
        endpoint.owner_team.department_id,
    )


def test_streaming_passes_chunks_through_and_bills_the_engine_counts(gateway_url, stack):
    dep, engines = stack["deployment"]("stream-dep")
    stack["endpoint"]("streamer", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "streamer")
    chunks = list(
        client(gateway_url, secret).chat.completions.create(
            model="streamer", messages=[{"role": "user", "content": "hi"}], max_tokens=12, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "word " * 12
    assert engines[0].requests[-1]["stream_options"]["include_usage"] is True
    flush_settled()
    event = UsageEvent.objects.get()
    assert (event.stream, event.output_tokens, event.input_tokens) == (True, 12, 10)
    assert event.ttft_ms is not None


def test_models_lists_only_what_the_key_may_call(gateway_url, stack, other_team):
    dep, _ = stack["deployment"]("a-dep")
    stack["endpoint"]("alpha", dep)
    stack["endpoint"]("beta", dep)
    other_dep, _ = stack["deployment"]("c-dep", owner=other_team)
    stack["endpoint"]("gamma", other_dep, owner=other_team)
    scoped = stack["key"](scopes=["alpha"])
    wait_for_model(gateway_url, scoped, "alpha")
    assert [m.id for m in client(gateway_url, scoped).models.list()] == ["alpha"]


def test_a_key_of_team_a_gets_404_for_team_b_endpoint(gateway_url, stack, other_team):
    other_dep, _ = stack["deployment"]("b-dep", owner=other_team)
    stack["endpoint"]("contracts", other_dep, owner=other_team)
    secret_b = stack["key"](owner=other_team)
    wait_for_model(gateway_url, secret_b, "contracts")
    secret_a = stack["key"]()
    with pytest.raises(openai.NotFoundError) as excinfo:
        client(gateway_url, secret_a).chat.completions.create(
            model="contracts", messages=[{"role": "user", "content": "x"}]
        )
    assert excinfo.value.body["code"] == "model_not_found"


def test_a_revoked_key_is_refused_at_once(gateway_url, stack, org):
    dep, _ = stack["deployment"]("r-dep")
    stack["endpoint"]("revocable", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "revocable")
    sdk = client(gateway_url, secret)
    sdk.chat.completions.create(model="revocable", messages=[{"role": "user", "content": "x"}], max_tokens=1)
    key = ApiKey.objects.get()
    key_services.revoke_key(actor=Actor(user=org["owner"]), key=key)
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(
            model="revocable", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )


def test_an_expired_key_is_refused(gateway_url, stack):
    from datetime import timedelta

    from django.utils import timezone

    dep, _ = stack["deployment"]("e-dep")
    stack["endpoint"]("expiring", dep)
    # Waited for with a key of the same team that does not expire: the wait may take longer than the expiry.
    wait_for_model(gateway_url, stack["key"](), "expiring")
    expires_at = timezone.now() + timedelta(seconds=5)
    secret = stack["key"](expires_at=expires_at)
    client(gateway_url, secret).models.list()  # valid now, and so known to the gateway
    time.sleep(max(0.0, (expires_at - timezone.now()).total_seconds()) + 0.1)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        client(gateway_url, secret).models.list()
    assert excinfo.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer ' OR 1=1; DROP TABLE gateway_apikey; --",
        "Bearer " + "A" * 8000,
        "Basic abc",
        "Bearer slm_x_y",
        "",
        "Bearer slm_aaaaaaaaaaaa_" + "b" * 43,
    ],
)
def test_garbage_in_the_authorization_header_gets_401_fast(gateway_url, stack, header):
    """Refused about as fast as the gateway's cheapest answer, an unknown path's 404, which reads no key: no
    slow path (no lookup for a malformed key, which test_keycache.py proves in-process, and no wait). Each
    is timed at its best of three through one client made before, so that neither a client's setup nor one
    stall of a busy 2-core runner counts; a well-formed unknown key id is a new one each time, so that each
    of the three includes its one lookup."""
    body = {"model": "x", "messages": []}
    refused, baseline = [], []
    with httpx.Client(base_url=gateway_url, timeout=20) as http:

        def timed(path: str, presented: str) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = http.post(path, json=body, headers={"Authorization": presented} if presented else {})
            return response, time.perf_counter() - started

        for _ in range(3):
            cheap, elapsed = timed("/v1/nothing", "")
            assert cheap.status_code == 404
            baseline.append(elapsed)
            fresh = header.replace("a" * 12, uuid.uuid4().hex[:12])  # only the well-formed id has 12 a's
            refused.append(timed("/v1/chat/completions", fresh))
    for response, _ in refused:
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["x-request-id"]
    fastest = min(elapsed for _, elapsed in refused)
    assert fastest < min(baseline) + 1.0, (fastest, baseline)  # a slow path takes far longer


def test_requests_per_minute_over_the_limit_get_429_with_retry_after(gateway_url, stack):
    dep, _ = stack["deployment"]("l-dep")
    stack["endpoint"]("limited", dep)
    secret = stack["key"](rpm_limit=3)
    wait_for_model(gateway_url, secret, "limited")
    body = {"model": "limited", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    same_minute()
    statuses = [
        httpx.post(
            f"{gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        for _ in range(4)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert 1 <= int(statuses[-1].headers["retry-after"]) <= 60
    assert statuses[-1].json()["error"]["code"] == "rate_limit_exceeded"


def test_concurrent_requests_never_overspend_a_token_budget(gateway_url, stack):
    dep, _ = stack["deployment"]("budget-dep", delay=0.05)
    stack["endpoint"]("budgeted", dep)
    budget = 2000
    secret = stack["key"](monthly_token_budget=budget)
    wait_for_model(gateway_url, secret, "budgeted")
    body = {"model": "budgeted", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 40}

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as http:
            responses = await asyncio.gather(
                *[
                    http.post(
                        f"{gateway_url}/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {secret}"},
                    )
                    for _ in range(60)
                ]
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(fire())
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1
    flush_settled()
    billed = sum(e.input_tokens + e.output_tokens for e in UsageEvent.objects.filter(status=200))
    assert billed <= budget, f"{billed} tokens billed against a budget of {budget}"
    assert UsageEvent.objects.filter(status=200).count() == statuses.count(200)


def test_a_client_cut_off_mid_stream_still_leaves_a_usage_row(gateway_url, stack):
    dep, _ = stack["deployment"]("slow-dep", chunk_delay=0.05)
    stack["endpoint"]("slow", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "slow")
    body = {
        "model": "slow",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 200,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{gateway_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        for received, _ in enumerate(response.iter_bytes(), start=1):
            if received >= 5:
                break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not usage.flush():
        time.sleep(0.2)
    event = UsageEvent.objects.get()
    assert event.status == 499 and event.error == "client_disconnected"
    assert 0 < event.output_tokens < 200, "billed for what was produced, not the whole request"


def test_killing_the_flusher_loses_and_duplicates_nothing(gateway_url, stack, monkeypatch):
    from serving.gateway import keystate
    from serving.gateway.events import USAGE_STREAM

    dep, _ = stack["deployment"]("f-dep")
    stack["endpoint"]("flushed", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "flushed")
    for _ in range(5):
        httpx.post(
            f"{gateway_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "flushed", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        )
    redis = keystate.client()
    # Each call's event goes on the stream after its answer: the dead flusher must find all five there.
    deadline = time.monotonic() + 15
    while redis.xlen(USAGE_STREAM) < 5:
        assert time.monotonic() < deadline, f"{redis.xlen(USAGE_STREAM)} of 5 events on the stream"
        time.sleep(0.05)
    usage._ensure_group(redis)
    # A flusher that read the events and died before committing (or before acknowledging):
    taken = redis.xreadgroup(usage.GROUP, "dead-flusher", {USAGE_STREAM: ">"}, count=3)
    assert len(taken[0][1]) == 3
    UsageEvent.objects.create(**usage._event(taken[0][1][0][1]))  # one got committed
    monkeypatch.setattr(usage, "CLAIM_IDLE_MS", 0)
    assert usage.flush() == 5
    assert UsageEvent.objects.count() == 5
    assert usage.flush() == 0


def until_no_replica(gateway_url: str, secret: str, body: dict) -> httpx.Response:
    """The first 503 once the routing table sees no ready replica (it is rebuilt every 200 ms, later on a
    busy machine): a fixed sleep made the test fail when the rebuild came late."""
    deadline = time.monotonic() + 15
    while True:
        response = httpx.post(
            f"{gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        if response.status_code == 503 or time.monotonic() > deadline:
            assert response.status_code == 503, response.text
            return response
        time.sleep(0.1)


def test_a_dead_replica_is_skipped_and_no_replica_is_503(gateway_process, stack):
    from serving.models import Replica

    gateway_url, log = gateway_process
    dep, engines = stack["deployment"]("h-dep")
    stack["endpoint"]("healthy", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "healthy")
    live = Replica.objects.get(deployment=dep)
    # A second 'ready' replica whose engine is gone: connection refused, so the gateway tries the other one.
    dead = Replica.objects.create(
        deployment=dep, node=live.node, generation=1, state="ready", host="127.0.0.1", port=1
    )
    body = {"model": "healthy", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    passed_over = f"replica {dead.pk} at http://127.0.0.1:1 failed before answering"
    deadline = time.monotonic() + 20  # until the table holds it and the balancer has picked it once
    while passed_over not in log.read_text():
        assert time.monotonic() < deadline, "no call was ever sent to the dead replica"
        response = httpx.post(
            f"{gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 200, "each call answered by the live replica"
        time.sleep(0.05)
    Replica.objects.filter(deployment=dep).update(state="starting")
    response = until_no_replica(gateway_url, secret, body)
    assert response.json()["error"]["code"] == "no_replica_available"


def test_the_503_warning_says_how_old_the_routing_table_is_not_when_in_epoch_seconds(gateway_process, stack):
    from serving.models import Replica

    gateway_url, log = gateway_process
    dep, _ = stack["deployment"]("stale-dep")
    stack["endpoint"]("stale", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "stale")
    Replica.objects.filter(deployment=dep).update(state="starting")
    body = {"model": "stale", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    until_no_replica(gateway_url, secret, body)
    warning = next(line for line in log.read_text().splitlines() if "no replica of endpoint stale" in line)
    assert re.search(r"in the routing table loaded \d+\.\d s ago \(version \d+\): \{", warning), warning
    assert not re.search(r"\d{10}\.\d{3}", warning), "no raw epoch"


def test_the_routing_table_is_described_by_its_age_and_version():
    from serving.gateway.routing import Snapshot
    from serving.gateway.table_refresh import describe_table

    table = Snapshot(built_at=1796104532.891)
    assert describe_table(table, 41, now=1796104535.941) == "routing table loaded 3.0 s ago (version 41)"
    assert describe_table(Snapshot(), 0, now=1796104535.941) == "routing table not loaded yet"


def test_an_upstream_that_does_not_answer_in_time_gives_504(gateway_process, stack):
    gateway_url, log = gateway_process
    dep, _ = stack["deployment"]("t-dep", delay=3.5)
    stack["endpoint"]("sleepy", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "sleepy")
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        timeout=20,
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "sleepy", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    )
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout", (
        f"{response.status_code} {response.text}\n--- gateway log ---\n{log.read_text()[-3000:]}"
    )


def test_a_request_an_engine_had_and_did_not_answer_in_time_is_billed_its_worst_case(gateway_url, stack):
    """The engine may have worked to the end: a timeout must not make its work free and repeatable. A
    request that never reached an engine is not billed."""
    dep, engines = stack["deployment"]("t-dep", delay=3.5)
    stack["endpoint"]("sleepy", dep, price=("1000000", "2000000"))
    gone, _ = stack["deployment"]("gone-dep")
    stack["endpoint"]("gone", gone, price=("1000000", "2000000"))
    with socket.socket() as unused:  # a port nothing listens on: refused before reaching an engine
        unused.bind(("127.0.0.1", 0))
        Replica.objects.filter(deployment=gone).update(port=unused.getsockname()[1])
    secret = stack["key"](monthly_budget=Decimal("100000"))
    wait_for_model(gateway_url, secret, "gone")
    body = orjson.dumps({"model": "sleepy", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10})
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    response = httpx.post(f"{gateway_url}/v1/chat/completions", content=body, headers=headers, timeout=20)
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert len(engines[0].requests) == 1
    # Billed: the openai SDKs, which send a 5xx twice more by default, are told not to (billed each time).
    assert response.headers["x-should-retry"] == "false"
    refused = httpx.post(
        f"{gateway_url}/v1/chat/completions", content=body.replace(b"sleepy", b"gone"), headers=headers
    )
    assert refused.status_code == 503, refused.text
    assert "x-should-retry" not in refused.headers, "not billed: a retry may find a replica"
    flush_settled()
    rows = {e.endpoint: e for e in UsageEvent.objects.all()}
    timed_out = rows["sleepy"]
    assert (timed_out.status, timed_out.error) == (504, "upstream_timeout")
    # Its worst case: the prompt's bound (its bytes and the chat template) and every completion token asked.
    assert (timed_out.input_tokens, timed_out.output_tokens) == (len(body) + CHAT_TEMPLATE_TOKENS, 10)
    assert timed_out.cost == Decimal(len(body) + CHAT_TEMPLATE_TOKENS + 2 * 10)
    assert (rows["gone"].status, rows["gone"].cost, rows["gone"].input_tokens) == (503, 0, 0)


def test_metrics_are_labelled_by_endpoint_and_team_never_by_key(gateway_url, stack):
    dep, _ = stack["deployment"]("m-dep")
    stack["endpoint"]("measured", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "measured")
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "measured", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
    )
    assert response.status_code == 200
    # Counted after the answer has gone out (app.py's _settle): polled until it is.
    series = 'portfolio_gateway_requests_total{endpoint="measured",status="200",team="support-ai"}'
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{gateway_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
        if series in text:
            break
        assert time.monotonic() < deadline, f"{series} never appeared:\n{text}"
        time.sleep(0.1)
    assert secret.split("_")[1] not in text and secret not in text


def test_no_key_secret_ever_reaches_the_gateway_log(gateway_url, stack, tmp_path_factory):
    dep, _ = stack["deployment"]("log-dep")
    stack["endpoint"]("logged", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "logged")
    body = {"model": "logged", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"})
    httpx.post(
        f"{gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}x"}
    )
    httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "nope"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    logs = "".join(p.read_text() for p in tmp_path_factory.getbasetemp().rglob("gateway.log"))
    assert secret.split("_", 2)[2][:16] not in logs


def test_a_keep_alive_connection_closed_by_the_engine_is_retried_not_answered_503(gateway_url, stack):
    dep, engines = stack["deployment"]("idle-dep", close_reused_connections=True)
    stack["endpoint"]("idle", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "idle")
    body = {"model": "idle", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    statuses = [
        httpx.post(
            f"{gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
        ).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 200]
    assert engines[0].hung_up >= 3, (
        "the gateway reused its pooled connections, and the engine hung up on them"
    )

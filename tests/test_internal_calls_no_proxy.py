"""The platform's internal calls (to the gateway, to an engine) never go through a proxy named in the
environment: a worker or node agent may run with ``HTTP_PROXY`` set for the Hub, and every one of these
calls carries a key (a team's service key, a playground ticket, an engine key) and prompts (found by review:
urllib's ``urlopen`` and httpx both took the environment's proxy, which received them).

Each test points ``HTTP_PROXY`` (and its kin) at a recording server, leaves ``NO_PROXY`` unset, and calls the
real function against a loopback server standing in for the gateway or the engine: the call reaches it
directly and the proxy is sent nothing."""

from __future__ import annotations

import http.server
import json
import random
import threading

import pytest

from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import Membership
from portfolio.registry.models import Artifact, Model, ModelVersion
from serving import adapter_sync, agent, playground, processes
from serving.choices import PoolKind, ReplicaState
from serving.models import ComputePool, Deployment, Endpoint, Replica, Rollout
from tests.conftest import actor_for
from tests.serving.nodes import add_node
from training import serving_speed
from training.evals import canary_judging, gateway

ANSWER = {
    "choices": [{"message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


class Recorder:
    """A loopback HTTP server that keeps each request's line and Authorization header and answers
    ``status`` (a chat completion when 200)."""

    def __init__(self, status: int):
        self.seen: list[tuple[str, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.seen.append((self.requestline, self.headers.get("Authorization") or ""))
                data = json.dumps(ANSWER).encode() if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 - the standard library's names

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(monkeypatch):
    """A recording proxy named in the environment as a corporate network names it; refuses what it gets
    (407), so a call through it fails at once."""
    server = Recorder(407)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, server.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.close()


@pytest.fixture
def target():
    """The gateway or engine the call is meant for."""
    server = Recorder(200)
    yield server
    server.close()


def _replica(port: int, pk: int = 7) -> Replica:
    """An engine's replica, not stored: what the engine calls read of it (address, key)."""
    return Replica(id=pk, host="127.0.0.1", port=port, deployment=Deployment(name="smol-dep"))


def test_the_node_agents_health_probe_goes_straight_to_the_engine(proxy, target):
    assert processes.probe(target.url, "engine-key") == processes.HEALTHY
    assert target.seen == [("GET /health HTTP/1.1", "Bearer engine-key")]
    assert proxy.seen == []


def test_the_launchers_health_probe_goes_straight_to_the_web_server(proxy, target):
    """``make run`` behind a corporate proxy: the proxy answered the probe, and the server was never seen up."""
    from portfolio import launcher

    assert launcher._answers(f"{target.url}/")
    assert target.seen == [("GET /healthz HTTP/1.1", "")]
    assert proxy.seen == []


def test_the_benchmarks_call_the_gateway_straight(proxy, target):
    from benchmarks.gateway import harness

    assert harness.post(f"{target.url}/v1/chat/completions", "{}", "key")[0] == 200
    assert target.seen == [("POST /v1/chat/completions HTTP/1.1", "Bearer key")]
    assert proxy.seen == []


def test_an_adapter_load_goes_straight_to_the_engine(proxy, target):
    replica = _replica(target.port)

    adapter_sync.engine_request(replica, "POST", "/v1/load_lora_adapter", {"lora_name": "tone"})

    assert target.seen == [("POST /v1/load_lora_adapter HTTP/1.1", f"Bearer {agent.engine_key(7)}")]
    assert proxy.seen == []


def test_serving_speed_is_measured_straight_on_the_replica(proxy, target):
    measured = serving_speed.measure(
        serving_speed.ServingTarget(_replica(target.port), "smol-dep"), [{"prompt": "Hello"}], requests=1
    )

    assert "error" not in measured
    assert len(target.seen) == 2  # one unmeasured, one measured
    assert proxy.seen == []


def test_an_eval_runs_gateway_client_goes_straight_to_the_gateway(proxy, target):
    """The client eval runs, the rollout judge and distillation's teacher calls use (``KeyedClient``)."""
    with gateway.KeyedClient(base_url=target.url, headers={"Authorization": "Bearer pk_service"}) as client:
        answer = gateway.ask(client, "support-bot", [{"role": "user", "content": "Clause 7.2"}], 16)

    assert answer.text == "billing"
    assert target.seen == [("POST /v1/chat/completions HTTP/1.1", "Bearer pk_service")]
    assert proxy.seen == []


@pytest.mark.django_db
def test_an_eval_run_calls_the_gateway_straight_with_its_service_key(proxy, target, team, settings):
    settings.GATEWAY_INTERNAL_URL = target.url
    Endpoint.objects.create(name="support-bot", owner_team=team)

    with gateway.client_for(team, "support-bot", "eval run #1") as client:
        gateway.ask(client, "support-bot", [{"role": "user", "content": "Clause 7.2"}], 16)

    [(line, authorization)] = target.seen
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert authorization.startswith("Bearer ")
    assert proxy.seen == []


@pytest.fixture
def deployed(team):
    """A deployment of ``team`` with one ready replica at ``port`` (set by the test)."""
    artifact = Artifact.objects.create(
        id="f" * 64, store_uri="file:///x", size_bytes=1, file_count=0, files=[]
    )
    model = Model.objects.create(name="smol", owner_team=team)
    version = ModelVersion.objects.create(
        model=model, number=1, source="local", artifact=artifact, status="ready"
    )
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    deployment = Deployment.objects.create(name="smol-dep", owner_team=team, version=version, pool=pool)

    def ready_at(port: int) -> Deployment:
        Replica.objects.create(
            deployment=deployment,
            node=add_node(pool, "n1"),
            generation=1,
            state=ReplicaState.READY,
            host="127.0.0.1",
            port=port,
        )
        return deployment

    return ready_at


@pytest.mark.django_db
def test_the_rollout_judge_asks_the_canary_straight_on_its_replica(proxy, target, deployed, team):
    deployment = deployed(target.port)
    endpoint = Endpoint.objects.create(name="support-bot", owner_team=team)
    rollout = Rollout(endpoint=endpoint, deployment=deployment.name, adapter="")

    answer = canary_judging.canary_answer(rollout, [{"role": "user", "content": "Hi"}], random.Random(1), 5)

    assert answer == "billing"
    replica = Replica.objects.get(deployment=deployment)
    assert target.seen == [("POST /v1/chat/completions HTTP/1.1", f"Bearer {agent.engine_key(replica.pk)}")]
    assert proxy.seen == []


@pytest.mark.django_db
def test_the_playground_calls_the_gateway_straight(proxy, target, deployed, team, make_user, settings):
    user = make_user("engineer")
    Membership.objects.create(user=user, team=team, role=TeamRole.ENGINEER)
    settings.GATEWAY_INTERNAL_URL = target.url

    result = playground.try_prompt(actor=actor_for(user), deployment=deployed(1), prompt="Say hello")

    assert result.text == "billing"
    assert [line for line, _auth in target.seen] == ["POST /v1/chat/completions HTTP/1.1"]
    assert proxy.seen == []

"""A real gateway process (uvicorn serving portfolio.asgi) against the test database and Redis."""

from __future__ import annotations

import time
import urllib.request
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db import transaction

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.registry.models import Artifact, Model, ModelVersion
from serving import agent
from serving.choices import PoolKind, ReplicaState
from serving.gateway import inflight, keystate, usage
from serving.gateway import services as key_services
from serving.models import ComputePool, Deployment, Endpoint, EndpointRoute, Replica
from tests.conftest import actor_for
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.process import start_gateway, stop_gateway
from tests.serving.nodes import add_node

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # prices the tests set are in force for all their usage

_GATEWAY_LOGS: list[Path] = []  # of the gateways running now, shown under any test that fails
METRICS_TOKEN = "scrape-token-for-tests"  # noqa: S105 - the test gateway's


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for log in _GATEWAY_LOGS:
            if log.exists():
                report.sections.append((f"gateway log {log.parent.name}", log.read_text()[-6000:]))


@pytest.fixture(scope="module")
def gateway_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """The gateway's base URL and its log."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with django_db_blocker.unblock():
        process, base = start_gateway(
            log,
            PORTFOLIO_GATEWAY_UPSTREAM_TIMEOUT="2",
            PORTFOLIO_METRICS_TOKEN=METRICS_TOKEN,
            PORTFOLIO_PLAYGROUND_RPM="3",
        )
    _GATEWAY_LOGS.append(log)
    yield base, log
    _GATEWAY_LOGS.remove(log)
    stop_gateway(process)


@pytest.fixture(scope="module")
def gateway_url(gateway_process):
    return gateway_process[0]


@pytest.fixture
def stack(org, team, other_team, transactional_db):
    """A deployment with one 'ready' replica served by a fake engine, an endpoint for it, and helpers."""
    engines: list[FakeEngine] = []
    admin = actor_for(org["admin"])
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    node = add_node(pool, "n1", memory_bytes=2**34)
    artifact = Artifact.objects.create(
        id="a" * 64, store_uri="file:///x", size_bytes=1, file_count=0, files=[]
    )

    def deployment(
        name: str, owner=team, task: str = "chat", replicas: int = 1, **engine_kwargs
    ) -> tuple[Deployment, list[FakeEngine]]:
        model = Model.objects.create(name=f"{name}-model", owner_team=owner, task=task)
        version = ModelVersion.objects.create(
            model=model, number=1, source="local", artifact=artifact, status="ready", parameter_count=1000
        )
        dep = Deployment.objects.create(
            name=name, owner_team=owner, version=version, pool=pool, engine_args={"max_model_len": 512}
        )
        started = []
        for _ in range(replicas):
            replica = Replica.objects.create(
                deployment=dep, node=node, generation=1, state=ReplicaState.READY, host="127.0.0.1"
            )
            engine = FakeEngine(agent.engine_key(replica.pk), **engine_kwargs).start()
            engines.append(engine)
            started.append(engine)
            replica.port = engine.port
            replica.save(update_fields=["port"])
        return dep, started

    def endpoint(
        name: str,
        dep: Deployment,
        owner=team,
        *,
        fallback: Endpoint | None = None,
        max_n: int = 8,
        price: tuple[str, str] | None = None,
    ) -> Endpoint:
        """An endpoint routing to ``dep``; ``price``: per million input and output tokens. Made directly in the
        database (a fallback to another team's endpoint included, as a row from before the service refused it)."""
        with transaction.atomic():  # as the service creates them: never an endpoint without its route
            ep = Endpoint.objects.create(name=name, owner_team=owner, fallback=fallback, max_n=max_n)
            EndpointRoute.objects.create(endpoint=ep, deployment=dep, weight=100)
            if price is not None:
                Price.objects.create(
                    kind=PriceKind.ENDPOINT,
                    subject_id=str(ep.pk),
                    subject_name=ep.name,
                    effective_from=LONG_AGO,
                    input_per_million=Decimal(price[0]),
                    output_per_million=Decimal(price[1]),
                )
        return ep

    def key(owner=team, **limits) -> str:
        actor = admin
        _, secret = key_services.create_key(actor=actor, team=owner, name="test key", **limits)
        return secret

    yield {"deployment": deployment, "endpoint": endpoint, "key": key, "node": node}
    for engine in engines:
        engine.stop()


def chat(base: str, secret: str, model: str, *, max_tokens: int = 10) -> httpx.Response:
    """A one-word chat completion of ``model`` through the gateway at ``base``, with API key ``secret``."""
    return httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": max_tokens},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )


def wait_for_model(base: str, secret: str, name: str, timeout: float = 10) -> None:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{base}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if name in {m["id"] for m in json.loads(response.read())["data"]}:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} never appeared in /v1/models")


def wait_for_table(base: str, stack: dict, deployment: Deployment, timeout: float = 30) -> None:
    """Return once the gateway's routing table holds every change committed before this call, however late
    its refresh comes on a busy runner. A change such as a replica no longer ready shows in no answer a test
    could wait on without making calls that count (usage rows, an engine's requests): an endpoint made now
    (routed to ``deployment``, of its team) is listed by /v1/models only in a table read after it, and each
    table is read in one REPEATABLE READ transaction (routing.build_snapshot) and replaces the last one
    whole, so a table that lists it holds every change committed before it as well."""
    mark = f"table-mark-{uuid.uuid4().hex[:12]}"
    stack["endpoint"](mark, deployment, owner=deployment.owner_team)
    wait_for_model(base, stack["key"](owner=deployment.owner_team), mark, timeout)


def same_minute(needed: float = 10.0) -> None:
    """Return with at least ``needed`` seconds left in this clock minute, having slept into the next minute
    if fewer were left. A key's per-minute limits count in clock minutes (limits.py: a month begins with a
    minute too), so a burst that straddled a minute's end would be counted in two and the call it expects
    refused would pass. Called just before such a burst: the longest of them, to the end of its test, took
    0.2 s on a 2-core runner at a load of 3.4, far inside the 10 s asked by default."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.01)


def wait_settled(timeout: float = 15) -> None:
    """Return once every call a gateway admitted has settled: a gateway sends its answer first and settles
    after (app.py's ``_settle``, composite.py), so Redis read right after a response may not hold its
    settlement yet. The settlement takes the call's entry out of its gateway's in-flight ledger in the same
    script that corrects its counters (limits.SETTLE). Every ledger is waited on, also one whose gateway's
    liveness key is missing: each test begins with Redis emptied (tests/conftest.py's ``_empty_cache``) and
    a gateway renews that key only every 10 s (liveness.py), so its absence says nothing of a live gateway.
    (A test that kills a gateway reaps its ledger itself, as test_inflight.py does.)"""
    client = keystate.client()
    deadline = time.monotonic() + timeout
    while True:
        open_entries = {
            ledger.decode(): count
            for ledger in client.scan_iter(match=inflight.ledger_key("*"))
            if (count := client.hlen(ledger))
        }
        if not open_entries:
            return
        assert time.monotonic() < deadline, f"calls still unsettled after {timeout} s: {open_entries}"
        time.sleep(0.02)


def flush_settled(timeout: float = 15) -> int:
    """Flush the usage stream once every call a gateway admitted has settled (``wait_settled``), and say
    how many events moved: a flush right after a response can come before its event is on the stream."""
    wait_settled(timeout)
    # The settlement takes the ledger entry out one command before it appends the event (same pipeline).
    time.sleep(0.05)
    moved = 0
    while batch := usage.flush():
        moved += batch
    return moved


# For the key and usage pages (test_views.py, test_views_usage.py).
@pytest.fixture
def no_gateway_processes(monkeypatch):
    """No gateway runs in the page tests: revocations are not announced to one."""
    monkeypatch.setattr(keystate, "mark_revoked", lambda key_id: None)
    monkeypatch.setattr(keystate, "invalidate", lambda key_id: None)


@pytest.fixture
def key(org, team):
    key, _ = key_services.create_key(
        actor=actor_for(org["developer"]), team=team, name="router prod", rpm_limit=60
    )
    return key


@pytest.fixture
def other_key(org, other_team):
    key, _ = key_services.create_key(
        actor=actor_for(org["outsider"]), team=other_team, name="contracts batch"
    )
    return key

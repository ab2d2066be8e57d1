"""/v1/rerank and /v1/score through a real gateway to a real vLLM CPU engine serving a tiny cross-encoder
(tests/e2e/cross_encoder.py): the engine takes the bodies the gateway forwards, answers under the endpoint's
name, and the usage event carries the engine's own token count, priced from the price book. The engine is
started once for the module, without the node agent (tests/e2e/test_serving.py covers that path)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.registry.models import Artifact, Model, ModelVersion
from serving.choices import PoolKind, ReplicaState
from serving.gateway import services as key_services
from serving.gateway import usage
from serving.gateway.models import UsageEvent
from serving.models import ComputePool, Deployment, Endpoint, EndpointRoute, Node, Replica
from tests.conftest import actor_for
from tests.e2e import cross_encoder
from tests.e2e.agent import ENGINE_READY_TIMEOUT
from tests.gateway.process import start_gateway, stop_gateway
from tests.processes import stop_group

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A vLLM CPU engine serving the tiny cross-encoder as ``ranker-dep``; its port."""
    root = tmp_path_factory.mktemp("cross-encoder")
    model = cross_encoder.build(root / "model")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = root / "engine.log"
    process = subprocess.Popen(  # noqa: S603
        [
            settings.ENGINE_PYTHON["cpu"],
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            "ranker-dep",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "512",
            "--dtype",
            "float32",
            "--runner",
            "pooling",
        ],
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + ENGINE_READY_TIMEOUT
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)  # noqa: S310
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the engine did not start:\n{log.read_text()[-4000:]}") from None
                time.sleep(2)
        yield port
    finally:
        stop_group(process, grace=20)


def test_rerank_and_score_reach_a_real_engine_and_are_metered_by_its_tokens(engine, org, team, tmp_path):
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    node = Node.objects.create(
        name="n1",
        pool=pool,
        address="127.0.0.1",
        cpu_cores=2,
        memory_bytes=2**34,
        heartbeat_at=timezone.now(),
    )
    artifact = Artifact.objects.create(
        id="c" * 64, store_uri="file:///x", size_bytes=1, file_count=0, files=[]
    )
    model = Model.objects.create(name="tiny-ranker", owner_team=team, task="rerank")
    version = ModelVersion.objects.create(
        model=model, number=1, source="local", artifact=artifact, status="ready", parameter_count=357_377
    )
    deployment = Deployment.objects.create(
        name="ranker-dep", owner_team=team, version=version, pool=pool, engine_args={"max_model_len": 512}
    )
    Replica.objects.create(
        deployment=deployment,
        node=node,
        generation=1,
        state=ReplicaState.READY,
        host="127.0.0.1",
        port=engine,
    )
    endpoint = Endpoint.objects.create(name="ranker", owner_team=team)
    EndpointRoute.objects.create(endpoint=endpoint, deployment=deployment, weight=100)
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(endpoint.pk),
        subject_name="ranker",
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        input_per_million=Decimal("2.0"),
    )
    _, secret = key_services.create_key(actor=actor_for(org["admin"]), team=team, name="e2e rerank")

    gateway, base = start_gateway(tmp_path / "gateway.log")
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        documents = ["refund a double charge", "reset a password", "the app crashes on start"]
        deadline = time.monotonic() + 30
        while True:  # until the gateway's routing table has the endpoint
            ranked = httpx.post(
                f"{base}/v1/rerank",
                json={"model": "ranker", "query": "charged twice", "documents": documents, "top_n": 2},
                headers=headers,
                timeout=120,
            )
            if ranked.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ranked.status_code == 200, ranked.text
        answer = ranked.json()
        assert answer["model"] == "ranker" and len(answer["results"]) == 2
        assert {r["index"] for r in answer["results"]} <= {0, 1, 2}
        scored = httpx.post(
            f"{base}/v1/score",
            json={"model": "ranker", "text_1": "charged twice", "text_2": documents},
            headers=headers,
            timeout=120,
        )
        assert scored.status_code == 200, scored.text
        assert [row["index"] for row in scored.json()["data"]] == [0, 1, 2]
        time.sleep(0.5)
        usage.flush()
        events = {e.kind: e for e in UsageEvent.objects.all()}
        assert events["rerank"].input_tokens == answer["usage"]["prompt_tokens"] > 0
        assert events["score"].input_tokens == scored.json()["usage"]["prompt_tokens"] > 0
        assert events["rerank"].cost == Decimal(answer["usage"]["prompt_tokens"] * 2) / 1_000_000
    finally:
        stop_gateway(gateway)

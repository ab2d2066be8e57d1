"""A real vLLM CPU engine started directly (not by a node agent: tests/e2e/test_serving.py covers that path)
for a tiny model a fixture built, and the rows that make the gateway route an endpoint to it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.registry.models import Artifact, Model, ModelVersion
from serving.choices import PoolKind, ReplicaState
from serving.models import ComputePool, Deployment, Endpoint, EndpointRoute, Node, Replica
from tests.e2e.agent import ENGINE_READY_TIMEOUT
from tests.processes import stop_group


@contextmanager
def running(model: Path, served_name: str, log: Path, *args: str, env: dict | None = None) -> Iterator[int]:
    """The engine's port while it serves ``model`` as ``served_name``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(  # noqa: S603
        [
            settings.ENGINE_PYTHON["cpu"],
            "-m",
            "vllm.entrypoints.openai.api_server",
            *("--model", str(model), "--served-model-name", served_name),
            *("--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", *args),
        ],
        env={
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        },
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


def route(
    team, *, task: str, deployment: str, endpoint: str, port: int, max_model_len: int, **price
) -> Endpoint:
    """A ready replica of ``deployment`` at ``port`` behind ``endpoint``, priced by ``price`` (rate fields)."""
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
    model = Model.objects.create(name=f"tiny-{task}", owner_team=team, task=task)
    version = ModelVersion.objects.create(
        model=model, number=1, source="local", artifact=artifact, status="ready", parameter_count=1
    )
    served = Deployment.objects.create(
        name=deployment,
        owner_team=team,
        version=version,
        pool=pool,
        engine_args={"max_model_len": max_model_len},
    )
    Replica.objects.create(
        deployment=served, node=node, generation=1, state=ReplicaState.READY, host="127.0.0.1", port=port
    )
    found = Endpoint.objects.create(name=endpoint, owner_team=team)
    EndpointRoute.objects.create(endpoint=found, deployment=served, weight=100)
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(found.pk),
        subject_name=endpoint,
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        **{name: Decimal(value) for name, value in price.items()},
    )
    return found

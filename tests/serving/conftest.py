"""The node agent with real engine processes: stand-ins behind the real engine guard
(tests/serving/stand_in_engine.py), started, health-checked and restarted by the agent's own code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from django.utils import timezone

from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from serving import agent, engine_args, processes
from serving.choices import NodeState, PoolKind
from serving.models import ComputePool, Deployment, Node, Replica
from tests.conftest import actor_for

STAND_IN = Path(__file__).with_name("stand_in_engine.py")


@pytest.fixture
def engines(settings, tmp_path, monkeypatch):
    """Engines the agent starts are stand-ins, launched with the real launch's environment (its key, the guard
    on its path); every one left is stopped at the end."""
    settings.DATA_DIR = tmp_path / "data"
    settings.ENGINE_KEY_SECRET = b"the secret before the rotation"
    settings.ENGINE_START_TIMEOUT = 60
    real_build = engine_args.build

    def stand_in(**kwargs) -> engine_args.EngineLaunch:
        launch = real_build(**kwargs)
        return engine_args.EngineLaunch(
            argv=[sys.executable, str(STAND_IN), kwargs["host"], str(kwargs["port"])], env=launch.env
        )

    monkeypatch.setattr(engine_args, "build", stand_in)
    monkeypatch.setattr(agent, "materialize_version", lambda version: tmp_path)
    yield
    for process in processes.engines_on_this_machine(under=tmp_path).values():
        processes.stop(process, grace=5)


@pytest.fixture
def replica(org, team):
    pool = ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)
    node = Node.objects.create(
        name="keys-node",
        pool=pool,
        address="127.0.0.1",
        cpu_cores=2,
        memory_bytes=2**34,
        state=NodeState.READY,
        heartbeat_at=timezone.now(),
    )
    model = registry.create_model(actor=actor_for(org["engineer"]), name="smollm2", owner_team=team)
    artifact = Artifact.objects.create(
        id="a" * 64, store_uri="file:///x", size_bytes=1, file_count=1, files=[]
    )
    version = ModelVersion.objects.create(
        model=model, number=1, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
    )
    deployment = Deployment.objects.create(name="support-bot", owner_team=team, version=version, pool=pool)
    return Replica.objects.create(deployment=deployment, node=node, generation=1, host=node.address)

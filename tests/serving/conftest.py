"""Serving's service tests share one world: an admin and a team owner, a CPU pool with a node, a small base
model and a deployment of it; helpers to add nodes, adapters and deployments and to read the audit. The node
agent's tests start real engine processes: stand-ins behind the real engine guard
(tests/serving/stand_in_engine.py), started, health-checked and restarted by the agent's own code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from portfolio.audit.models import AuditEvent
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus, Visibility
from portfolio.registry.models import Artifact, ModelVersion
from serving import engine_args, prefetch, processes, services
from serving.choices import DesiredState, PoolKind, ReplicaState
from serving.models import ComputePool, Deployment, Replica
from tests.conftest import actor_for
from tests.registry.conftest import ready_base
from tests.serving.nodes import add_node

SMOLLM2_SHAPE = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "head_dim": 64,
}


@pytest.fixture
def admin(org):
    return actor_for(org["admin"])


@pytest.fixture
def owner(org):
    return actor_for(org["owner"])


@pytest.fixture
def pool(admin):
    return services.create_pool(actor=admin, name="cpu-pool", kind=PoolKind.CPU)


@pytest.fixture
def node(pool):
    return add_node(pool, "cpu-01")


@pytest.fixture
def artifact():
    return Artifact.objects.create(
        id="a" * 64, store_uri="file:///store/a", size_bytes=269_060_232, file_count=1, files=[]
    )


@pytest.fixture
def base_version(org, team, artifact):
    return ready_base(
        actor_for(org["engineer"]),
        team,
        "smollm2-135m",
        artifact,
        parameter_count=134_515_008,
        shape=SMOLLM2_SHAPE,
        dtype="bfloat16",
    )


def make_adapter(
    org, team, artifact, base: ModelVersion, *, model_name: str = "support-tone", creator: str = "engineer"
) -> ModelVersion:
    model = registry.create_model(actor=actor_for(org[creator]), name=model_name, owner_team=team)
    return ModelVersion.objects.create(
        model=model,
        number=1,
        kind=VersionKind.ADAPTER,
        base_version=base,
        source=Source.FINE_TUNE,
        artifact=artifact,
        status=VersionStatus.READY,
        parameter_count=1_000_000,
        metrics={"adapter": {"r": 8}},
    )


def deploy(
    actor, team, version, pool, *, name: str = "support-bot", replicas: int = 1, args=None
) -> Deployment:
    return services.create_deployment(
        actor=actor, name=name, team=team, version=version, pool=pool, replicas=replicas, args=args
    )


@pytest.fixture
def deployment(owner, team, base_version, pool, node):
    return deploy(owner, team, base_version, pool)


def live(deployment: Deployment):
    return Replica.objects.filter(deployment=deployment, desired=DesiredState.RUNNING).order_by("id")


def audited(action: str, obj) -> AuditEvent | None:
    return AuditEvent.objects.filter(action=action, object_id=str(obj.pk)).order_by("-sequence").first()


def share_with_everyone(version: ModelVersion) -> ModelVersion:
    version.model.visibility = Visibility.ORGANISATION
    version.model.save(update_fields=["visibility"])
    return version


def mark_ready(*replicas: Replica) -> None:
    Replica.objects.filter(pk__in=[r.pk for r in replicas]).update(state=ReplicaState.READY)


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
    monkeypatch.setattr(prefetch, "local_copy", lambda version, **_: tmp_path)
    yield
    for _, process in processes.all_engines(under=tmp_path):
        processes.stop(process, grace=5)


@pytest.fixture
def replica(org, team):
    pool = ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)
    node = add_node(pool, "keys-node", memory_bytes=2**34)
    model = registry.create_model(actor=actor_for(org["engineer"]), name="smollm2", owner_team=team)
    artifact = Artifact.objects.create(
        id="a" * 64, store_uri="file:///x", size_bytes=1, file_count=1, files=[]
    )
    version = ModelVersion.objects.create(
        model=model, number=1, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
    )
    deployment = Deployment.objects.create(name="support-bot", owner_team=team, version=version, pool=pool)
    return Replica.objects.create(deployment=deployment, node=node, generation=1, host=node.address)


def hold_adapters(replicas, *names: str) -> None:
    """As the agent records a confirmed load: ``replicas`` (a queryset) loaded ``names`` at the versions
    attached to their deployment now (the gateway, canary checks and serving speed use no other)."""
    for replica in replicas.select_related("deployment"):
        attached = dict(replica.deployment.adapters.values_list("name", "version_id"))
        replica.loaded_adapters = sorted(names)
        replica.adapter_versions = {name: attached[name] for name in names}
        replica.save(update_fields=["loaded_adapters", "adapter_versions"])

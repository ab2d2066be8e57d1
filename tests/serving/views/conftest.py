"""Fixtures of the serving pages' tests, on top of tests/serving/conftest.py's pool, node and artifact: a
ready base version and an adapter of it, a deployment of the base, an endpoint routing to it; no Celery
worker (reconciles are recorded)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving import services
from serving.choices import ReplicaState
from serving.models import Replica
from tests.conftest import actor_for
from tests.serving.conftest import SMOLLM2_SHAPE
from tests.serving.nodes import GIB

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    """No Celery worker in these tests: reconciles asked for on commit are recorded instead."""
    from serving import tasks

    calls: list[int] = []
    monkeypatch.setattr(
        tasks.reconcile_deployment_task, "delay", lambda deployment_id: calls.append(deployment_id)
    )
    monkeypatch.setattr(tasks, "poke_node", lambda name: None)
    return calls


def make_version(model, artifact, number: int = 1, **fields) -> ModelVersion:
    values = {
        "kind": VersionKind.BASE,
        "source": Source.LOCAL,
        "artifact": artifact,
        "status": VersionStatus.READY,
        "parameter_count": 134_515_008,
        "shape": SMOLLM2_SHAPE,
        "dtype": "bfloat16",
    } | fields
    return ModelVersion.objects.create(model=model, number=number, **values)


@pytest.fixture
def base_version(org, team, artifact):
    model = registry.create_model(actor=actor_for(org["engineer"]), name="smollm2-135m", owner_team=team)
    return make_version(model, artifact)


@pytest.fixture
def adapter_version(org, team, artifact, base_version):
    model = registry.create_model(actor=actor_for(org["engineer"]), name="support-tone", owner_team=team)
    return make_version(
        model,
        artifact,
        kind=VersionKind.ADAPTER,
        base_version=base_version,
        source=Source.FINE_TUNE,
        parameter_count=1_000_000,
        shape={},
        metrics={"adapter": {"r": 8}},
    )


@pytest.fixture
def deployment(owner, team, base_version, pool, node):
    return services.create_deployment(
        actor=owner, name="support-bot", team=team, version=base_version, pool=pool, replicas=1
    )


def add_replica(deployment, node, *, state=ReplicaState.READY, **fields) -> Replica:
    values = {
        "generation": deployment.generation,
        "state": state,
        "host": "127.0.0.1",
        "port": 8101,
        "pid": 4242,
        "reserved_memory_bytes": int(3.6 * GIB),
        "reserved_cores": 1,
        "last_health_at": timezone.now(),
    } | fields
    return Replica.objects.create(deployment=deployment, node=node, **values)


@pytest.fixture
def endpoint(owner, team, deployment):
    return services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": "support-bot"}]
    )


def audited(action: str, obj) -> AuditEvent | None:
    return AuditEvent.objects.filter(action=action, object_id=str(obj.pk)).order_by("-sequence").first()

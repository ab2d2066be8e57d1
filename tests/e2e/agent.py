"""The node agent of the end-to-end tests: a real `portfolio node-agent` process (a Celery worker) against
the test database and Redis, waiting on what it does (with its logs shown when it does not), and the demo
model deployed on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from portfolio.accounts.models import Team
from portfolio.registry.choices import VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from serving import processes, reconcile, services
from serving.choices import PoolKind, ReplicaState
from serving.models import Deployment, Node, Replica
from tests.gateway.process import database_url
from tests.processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
NODE = "e2e-node"
ENGINE_READY_TIMEOUT = 900


def agent_env(tmp_path) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_DATA_DIR": str(tmp_path / "node-data"),
        "PORTFOLIO_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "PORTFOLIO_ARTIFACT_CACHE": str(tmp_path / "node-cache"),
        "PORTFOLIO_NODE_POOL": "local-cpu",
        "PORTFOLIO_NODE_HEARTBEAT_SECONDS": "2",
        "PORTFOLIO_ENGINE_RESTART_BACKOFF": "2",
        "PORTFOLIO_REPLICA_DRAIN_SECONDS": "120",  # a long answer on a busy CPU finishes before its engine stops
        "PYTHONUNBUFFERED": "1",
    }


def start_agent(tmp_path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "portfolio.cli", "node-agent", "--name", NODE, "--concurrency", "1"],
        cwd=ROOT,
        env=agent_env(tmp_path),
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_agent(process: subprocess.Popen) -> None:
    stop_group(process, grace=30)


def wait(what: str, check, timeout: float, logs: list[Path], interval: float = 1.0):
    """Poll ``check`` until it answers; on a time-out fail with the tails of ``logs``. A folder among them
    stands for the ``*.log`` files in it when the time-out comes (an engine's log is written after the
    wait began)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    files = [f for p in logs for f in (sorted(p.glob("*.log")) if p.is_dir() else [p])]
    dump = "\n".join(f"--- {p.name} ---\n{processes.log_tail(p, 80)}" for p in files if p.exists())
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{dump}")


def ready_replica(deployment: Deployment) -> Replica | None:
    reconcile.reconcile_deployment(deployment.pk)
    return Replica.objects.filter(deployment=deployment, state=ReplicaState.READY).first()


def deploy_demo_model(admin, test_settings, tmp_path, agent_log: Path, engine_args: dict) -> Deployment:
    """The demo portfolio seeded and its model imported for real from its GGUF, a CPU pool the node agent
    registers in, and a deployment ``smol`` of one replica of the model there, owned by ``support-ai``.
    Its replica is only starting: wait_until_ready waits for it, once the caller has set up the rest."""
    test_settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    test_settings.IMPORT_ROOTS[0].mkdir()
    call_command("seed_demo")
    call_command("import_demo_model")
    base = ModelVersion.objects.get(model__name=MODEL_NAME, status=VersionStatus.READY)
    services.create_pool(actor=admin, name="local-cpu", kind=PoolKind.CPU)
    node = wait(
        "the node agent to register", lambda: Node.objects.filter(name=NODE).first(), 120, [agent_log]
    )
    return services.create_deployment(
        actor=admin,
        name="smol",
        team=Team.objects.get(slug="support-ai"),
        version=base,
        pool=node.pool,
        replicas=1,
        args=engine_args,
    )


def wait_until_ready(deployment: Deployment, tmp_path, agent_log: Path) -> Replica:
    return wait(
        "the replica to become ready",
        lambda: ready_replica(deployment),
        ENGINE_READY_TIMEOUT,
        [agent_log, tmp_path / "node-data" / "engines" / deployment.name],
        interval=3,
    )

"""The node agent of the end-to-end tests: a real `portfolio node-agent` process (a Celery worker) against
the test database and Redis, and waiting on what it does, with its logs shown when it does not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from serving import processes, reconcile
from serving.choices import ReplicaState
from serving.models import Deployment, Replica
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    dump = "\n".join(f"--- {p.name} ---\n{processes.log_tail(p, 80)}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{dump}")


def ready_replica(deployment: Deployment) -> Replica | None:
    reconcile.reconcile_deployment(deployment.pk)
    return Replica.objects.filter(deployment=deployment, state=ReplicaState.READY).first()

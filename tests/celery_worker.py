"""A real Celery worker (the `portfolio worker` command line) against the test database and Redis, whose
broker hands on any task unacknowledged for two seconds: what Redis does after its visibility timeout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

from portfolio import commands
from portfolio.envparse import database_url
from tests.processes import stop_group

ROOT = Path(__file__).resolve().parent.parent
VISIBILITY_TIMEOUT = 2

# Kombu sweeps overdue unacknowledged tasks back into their queue every 100 s by default; every second here,
# so that the short visibility timeout shows within a test. Everything else is the worker's own.
_WORKER = """
import sys
from portfolio.celery import app
options = app.conf.broker_transport_options
app.conf.broker_transport_options = {**options, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
app.worker_main(sys.argv[1:])
"""


def start_worker(queue: str, log: Path, **env: str) -> subprocess.Popen:
    command = commands.worker_command([queue], 2, f"redelivery@{queue}")
    args = command[command.index("worker") :]
    environment = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_DATA_DIR": str(settings.DATA_DIR),
        "PORTFOLIO_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "PORTFOLIO_ARTIFACT_CACHE": str(settings.ARTIFACT_CACHE),
        "PORTFOLIO_IMPORT_ROOTS": ",".join(str(root) for root in settings.IMPORT_ROOTS),
        "PORTFOLIO_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "PORTFOLIO_TASK_LEASE_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, *args],
        cwd=ROOT,
        env=environment,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(process: subprocess.Popen) -> None:
    stop_group(process, grace=30)


def deliveries(log: Path, task: str) -> int:
    """How many times the worker received ``task`` (each delivery logs one line)."""
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] received", log.read_text()))


def wait_for(what: str, check, log: Path, timeout: float = 90.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}\n--- worker log ---\n{log.read_text()[-6000:]}"
    )

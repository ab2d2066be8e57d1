"""A bad setting stops every `portfolio` sub-command with one line, as it stops `portfolio run`: `migrate`,
`worker`, `beat`, `node-agent`, `web` and `manage` printed a traceback of 17 to 45 lines instead (the settings
or the log level read outside the one `except`), and `web` made the data folder and its metrics/ before
failing (found by review). Real processes: what reaches the person is the exit status and standard error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = {  # were a database or Redis asked for, nothing answers there, and nothing embedded is started
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/nothing",
    "REDIS_URL": "redis://127.0.0.1:9/0",
}


def portfolio(tmp_path: Path, argv: list[str], **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTFOLIO_", "DJANGO_", "DATABASE_"))}
    env.pop("REDIS_URL", None)
    env.update(NOWHERE, PORTFOLIO_DATA_DIR=str(tmp_path / "data"), **variables)
    return subprocess.run(
        [sys.executable, "-m", "portfolio.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "argv, variable, value",
    [
        (["worker"], "PORTFOLIO_LOG_LEVEL", "LOUD"),
        (["worker", "--long"], "PORTFOLIO_LOG_LEVEL", "LOUD"),
        (["beat"], "PORTFOLIO_LOG_LEVEL", "LOUD"),
        (["node-agent"], "PORTFOLIO_LOG_LEVEL", "LOUD"),
        (["web", "--workers", "2"], "PORTFOLIO_TRUSTED_PROXIES", "*"),
        (["web", "--workers", "1"], "PORTFOLIO_TRUSTED_PROXIES", "10.0.0.1/8"),
        (["migrate"], "PORTFOLIO_ENV", "staging"),
        (["migrate"], "PORTFOLIO_USAGE_RETENTION_MONTHS", "99999"),
        (["manage", "check"], "PORTFOLIO_ENV", "staging"),
        (["manage", "requeue_engines", "--node", "gpu-01"], "PORTFOLIO_LOG_LEVEL", "LOUD"),
        # Read by no sub-command itself, only by Django's settings, which Celery and uvicorn load after the
        # exec: their traceback (and for `web`, uvicorn's), until the settings were read before it.
        (["worker"], "PORTFOLIO_EVAL_RUNS_PER_TEAM", "many"),
        (["node-agent"], "PORTFOLIO_EVAL_RUNS_PER_TEAM", "0"),
        (["beat"], "PORTFOLIO_BILLING_CURRENCY", "dollars"),
        (["web", "--workers", "1"], "PORTFOLIO_EVAL_RUNS_PER_TEAM", "many"),
    ],
)
def test_a_bad_setting_is_one_line_not_a_traceback(tmp_path, argv, variable, value):
    result = portfolio(tmp_path, argv, **{variable: value})
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"portfolio: {variable}") and result.stderr.count("\n") == 1, (
        result.stderr
    )


def test_web_refuses_a_bad_setting_before_it_makes_the_data_folder(tmp_path):
    result = portfolio(tmp_path, ["web", "--workers", "4"], PORTFOLIO_TRUSTED_PROXIES="0.0.0.0/0")
    assert result.returncode == 1 and "would trust every address" in result.stderr
    assert not (tmp_path / "data").exists()

"""`portfolio run` (what `make run` starts) on an empty data folder: embedded PostgreSQL and Redis, an
admin whose password is printed once, web + worker + beat, and the demo model imported, deployed on this
machine's CPU pool and answering; "ready" with a demo key that answers; a quiet terminal (the processes log
to files); Ctrl-C stops it all, engines included; a second run reuses the data and its demo answers again
(the replica left marked ready by the first run is not trusted)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]  # two starts, each deploying the demo
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300
DEMO_TIMEOUT = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(PORTFOLIO_DATA_DIR=str(data_dir), PORTFOLIO_NODE_NAME="e2e-node", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "portfolio.cli", "run", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_ready(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"portfolio run exited early ({process.returncode}):\n{log.read_text()[-5000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"portfolio run not ready after {START_TIMEOUT}s:\n{log.read_text()[-5000:]}")


def _interrupt(process: subprocess.Popen, data_dir: Path, log: Path) -> None:
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    try:
        assert process.wait(timeout=90) == 0, log.read_text()[-5000:]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        # Killed, the launcher stops nothing: the daemonized Redis, PostgreSQL, and the engines, trainers and
        # one-shots in sessions of their own would outlive the test run.
        from portfolio import embedded, launcher

        launcher.stop_work_under(data_dir)
        embedded.stop_all(data_dir)
        pytest.fail(f"portfolio run did not stop on Ctrl-C:\n{log.read_text()[-5000:]}")


def _wait_for_line(process: subprocess.Popen, log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if text in line:
                return line
        if process.poll() is not None:
            break
        time.sleep(2)
    pytest.fail(f"no {text!r} within {timeout}s:\n{log.read_text()[-8000:]}")


def test_run_starts_everything_serves_the_demo_and_ctrl_c_stops_everything(tmp_path):
    from serving import processes

    data_dir, port = tmp_path / "data", _free_port()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    process = _start(data_dir, port, first_log)
    try:
        _wait_ready(process, port, first_log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=10) as response:
            assert response.status == 200
        answer = _wait_for_line(process, first_log, "Demo ready:", DEMO_TIMEOUT)
        assert "smollm2-demo answered" in answer
        assert processes.engines_on_this_machine(under=data_dir)
        _wait_for_line(process, first_log, "[portfolio] ready:", 60)
        _demo_key_answers(data_dir, port)
    finally:
        _interrupt(process, data_dir, first_log)
    assert not processes.engines_on_this_machine(under=data_dir), "an engine outlived `portfolio run`"
    assert not processes.trainers_under(data_dir), "a trainer outlived `portfolio run`"
    output = first_log.read_text()
    password_file = data_dir / "admin-password"
    password = password_file.read_text().strip()
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
    assert output.count(password) == 1, "the admin password is printed exactly once"
    assert "starting worker" in output and "starting long-worker" in output and "starting beat" in output
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "embedded PostgreSQL still running"
    assert not (data_dir / "redis" / "redis.sock").exists(), "embedded Redis still running"

    assert all((data_dir / "logs" / f"{name}.log").exists() for name in ("web", "worker", "long-worker"))
    assert "celery@" not in output and "Scheduler: Sending due task" not in output, "chatter goes to the logs"
    assert output.index("Demo ready:") < output.index("[portfolio] ready:")

    process = _start(data_dir, port, second_log)
    try:
        _wait_ready(process, port, second_log)
        answer = _wait_for_line(process, second_log, "Demo ready:", DEMO_TIMEOUT)
        assert "smollm2-demo answered" in answer
    finally:
        _interrupt(process, data_dir, second_log)
    again = second_log.read_text()
    assert "Admin account exists" in again and password not in again
    assert "did not come up" not in again


def _demo_key_answers(data_dir: Path, port: int) -> None:
    key_file = data_dir / "demo-api-key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {key_file.read_text().strip()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert json.loads(response.read())["choices"][0]["message"]["content"]

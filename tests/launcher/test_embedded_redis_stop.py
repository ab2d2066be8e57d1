"""Stopping the embedded Redis stops it even when its socket does not answer (gone, or the server hung), by
the pid its pid file names, and never signals a process that pid now names instead. `make test` left one
Redis running after a whole suite that way."""

import os
import signal
import subprocess
import time

import psutil
import pytest

from portfolio import embedded


def _server(root) -> psutil.Process:
    embedded.ensure_redis(root)
    process = psutil.Process(int((root / "redis" / "redis.pid").read_text()))
    assert "redis-server" in " ".join(process.cmdline())
    return process


def _gone(process: psutil.Process, within: float = 10) -> bool:
    """Exited (a zombie counts: its parent is init, which reaps it in its own time)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def root(tmp_path):
    yield tmp_path / "data"
    for process in psutil.process_iter(
        ["cmdline"]
    ):  # what a failing test left running: not left to `make test`
        if str(tmp_path) in " ".join(process.info["cmdline"] or []):
            process.kill()


def test_a_redis_answering_on_its_socket_is_shut_down(root):
    process = _server(root)
    embedded.stop_redis(root)
    assert _gone(process)


def test_a_redis_whose_socket_is_gone_is_still_stopped(root):
    process = _server(root)
    embedded.redis_socket(root).unlink()
    embedded.stop_redis(root)
    assert _gone(process), "left running: its socket no longer answered"


def test_a_hung_redis_is_killed_after_the_wait(root):
    process = _server(root)
    os.kill(process.pid, signal.SIGSTOP)  # answers nothing, acts on no signal but SIGKILL
    embedded.stop_redis(root, timeout=2)
    assert _gone(process)


def test_a_pid_file_naming_another_process_signals_nothing(root):
    other = subprocess.Popen(["sleep", "30"])
    try:
        (root / "redis").mkdir(parents=True)
        (root / "redis" / "redis.pid").write_text(f"{other.pid}\n")
        embedded.stop_redis(root)
        time.sleep(0.3)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()

"""A merge process stops when the task that started and watches it dies (``training.orphans``): the reaper
fails that job, so nothing would record what the merge computed on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from training import orphans
from training.merges import runner

# A watcher (the middle process) starts a child in a session of its own, as ``training.tasks._start_child``
# does, prints the child's id and waits; the child guards itself, then sleeps far longer than the test.
WATCHER = f"""
import os, subprocess, sys
env = {{**os.environ, "{orphans.PARENT_ENV}": str(os.getpid())}}
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True, env=env)
print(child.pid, flush=True)
child.wait()
"""
CHILD = """
import time
from training.orphans import exit_with_parent
exit_with_parent(0.05)
time.sleep(120)
"""


def gone(pid: int, within: float) -> bool:
    """Whether ``pid`` has exited (or is a zombie) by ``within`` seconds from now; looked at least once."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_a_guarded_child_stops_when_its_watcher_is_killed():
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, CHILD], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    child = int(watcher.stdout.readline())
    try:
        time.sleep(1.0)  # the guard is running (the child imported it and started its thread)
        assert not gone(child, 0), "the child did not start, or stopped with its watcher alive"
        watcher.send_signal(signal.SIGKILL)
        watcher.wait(timeout=10)
        assert gone(child, 10), "the child ran on after its watcher was killed"
    finally:
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)


def test_the_merge_process_guards_itself_before_anything_else(monkeypatch):
    class Guarded(Exception):
        pass

    def guard(interval: float = 1.0) -> None:
        raise Guarded

    monkeypatch.setattr(orphans, "exit_with_parent", guard)
    with pytest.raises(Guarded):
        runner.main()


def test_the_merge_task_names_itself_as_the_merge_processes_parent(monkeypatch, tmp_path):
    from training import tasks

    started = {}

    def start(module, job_id, log, env):
        started.update(module=module, env=env)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tasks.merges, "claim", lambda job_id: object())
    monkeypatch.setattr(tasks.metering, "merge_started", lambda job, began: None)
    monkeypatch.setattr(tasks, "_merge_log_path", lambda job_id: tmp_path / "merge.log")
    monkeypatch.setattr(tasks, "_start_child", start)
    with pytest.raises(RuntimeError, match="stop here"):
        tasks.merge_adapter.run(7)
    assert started["module"] == "training.merges.runner"
    assert started["env"][orphans.PARENT_ENV] == str(os.getpid())

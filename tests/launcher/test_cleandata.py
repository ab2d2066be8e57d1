"""`make clean-data` (`portfolio clean-data`) deletes the data folder of `portfolio run` (PORTFOLIO_DATA_DIR),
stopping first the engines and trainers a crashed run left working in it, and never while a run holds it."""

import os
import subprocess
import sys
import time

import pytest

from portfolio import cli, embedded, launcher
from serving import processes

# Another `portfolio run`: holds the folder's run lock with its pid in it, until killed.
LOCK_HOLDER = """
import fcntl, os, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.write(str(os.getpid())); lock.flush()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    folder = (tmp_path / "data").resolve()
    folder.mkdir()
    (folder / "pgdata").mkdir()
    (folder / "run.lock").touch()  # what `make run` writes first: a folder of this platform's
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(folder))
    return folder


def _clean() -> int:
    with pytest.raises(SystemExit) as exit:
        cli.main(["clean-data"])
    return exit.value.code


def _left_behind(cwd, *args, env=None) -> subprocess.Popen:
    """A long-running process working in ``cwd``, in a process group of its own (as engines and trainers are)."""
    cwd.mkdir(parents=True)
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", *args],
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def _until(found, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not found() and time.monotonic() < deadline:
        time.sleep(0.1)
    return found()


def test_a_folder_a_running_launcher_holds_is_refused_and_nothing_is_stopped_or_deleted(
    data_dir, monkeypatch, capsys
):
    def refuse(*args, **kwargs):
        raise AssertionError("stopped something of a running launcher")

    monkeypatch.setattr(launcher, "stop_work_under", refuse)
    monkeypatch.setattr(embedded, "stop_all", refuse)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(data_dir / "run.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _clean() == 1
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert f"`portfolio run` (pid {holder.pid}) is using {data_dir}: stop it first" in capsys.readouterr().out
    assert (data_dir / "pgdata").is_dir()


def test_engines_and_trainers_a_crashed_run_left_are_stopped_then_the_folder_is_deleted(
    data_dir, monkeypatch
):
    engine = _left_behind(data_dir / "engines" / "7", env={**os.environ, processes.MARKER: "7"})
    trainer = _left_behind(data_dir / "training" / "job-3", "training.runner", "3")
    try:
        assert _until(lambda: 7 in processes.engines_on_this_machine(under=data_dir))
        assert _until(lambda: processes.trainers_under(data_dir))
        servers_stopped_in = []
        monkeypatch.setattr(
            embedded, "stop_all", lambda root: servers_stopped_in.append(root.exists() and root)
        )
        assert _clean() == 0
        engine.wait(timeout=5)  # stopped, not merely forgotten
        trainer.wait(timeout=5)
    finally:
        for process in (engine, trainer):
            process.kill()
            process.wait()
    assert servers_stopped_in == [data_dir]  # the embedded servers too, before their folder went
    assert not data_dir.exists()


def test_a_folder_that_does_not_exist_is_nothing_to_clean(data_dir, capsys):
    (data_dir / "pgdata").rmdir()
    (data_dir / "run.lock").unlink()
    data_dir.rmdir()
    assert _clean() == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_production_and_a_folder_portfolio_run_did_not_make_are_refused(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PORTFOLIO_ENV", "production")
    assert _clean() == 1 and (data_dir / "pgdata").exists()
    monkeypatch.delenv("PORTFOLIO_ENV")
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(documents))
    assert _clean() == 1 and (documents / "thesis.tex").exists()

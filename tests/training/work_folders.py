"""What the work-folder tests of trainers and merges share: a process killed outright in its work folder, and the
stop a watcher makes (SIGTERM to the group, SIGKILL after a grace) of a runner that must clean up on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from training import tasks

# Writes into a work folder (``argv[1]``, prefix ``argv[2]``) and is killed outright (SIGKILL, the OOM killer).
KILLED = """
import os, signal, sys, tempfile
work = tempfile.mkdtemp(dir=sys.argv[1], prefix=sys.argv[2])
open(os.path.join(work, "weights.safetensors"), "wb").write(b"weights")
os.kill(os.getpid(), signal.SIGKILL)
"""


def stop_removes_its_work_folder(script: str, folder: Path, says: str, pattern: str) -> None:
    """Runs ``script`` (a runner working in ``folder``) until it prints ``says`` with one folder ``pattern``
    made, stops it as its watcher does, and checks it exited by SIGTERM having removed its work folder; the
    stop does not wait out the grace (its watcher reaps it as it exits)."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        start_new_session=True,
    )
    try:
        assert process.stdout.readline() == f"{says}\n"
        assert len(list(folder.glob(pattern))) == 1
        started = time.monotonic()
        tasks._kill(process.pid, grace=60.0, process=process)
        assert time.monotonic() - started < 30, "the stop waited out the grace"
        assert process.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    assert list(folder.iterdir()) == []

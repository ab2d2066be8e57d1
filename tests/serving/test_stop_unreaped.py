"""An engine started by another process of the node agent (a reconcile pass in a pool child) is a zombie once
stopped, until that process reaps it: the stop saw its group still there and waited out the whole grace
(20 s a replica, under the node's lock), then killed what had already exited."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from serving import processes

# A parent that starts an engine stand-in in a session of its own, says its pid, and never reaps it.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(30)
"""


def test_an_engine_another_process_started_is_stopped_without_waiting_out_the_grace():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        engine = psutil.Process(int(parent.stdout.readline()))
        began = time.monotonic()
        processes.stop(engine, grace=5)
        assert time.monotonic() - began < 2
        assert engine.status() == psutil.STATUS_ZOMBIE  # exited; its own parent reaps it
    finally:
        parent.kill()
        parent.wait()

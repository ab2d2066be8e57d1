"""A launcher killed outright (SIGKILL: no clean-up of its own) takes its one-shot children with it on Linux,
as it takes its servers: ``watch_events`` polls forever, and the demo's deploy and fine-tune steps, in sessions
of their own, would be reached by nothing else. The start-up steps die with it too."""

import os
import signal
import subprocess
import sys
import time

import pytest

from portfolio import launcher
from tests.launcher.test_hangup import _gone
from tests.launcher.test_launcher import _serve, data_dir, started  # noqa: F401

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# A launcher stand-in: starts the event lines as the launcher does, says their pid, then waits to be killed.
STAND_IN = """
import sys, time
from portfolio import launcher
launcher.MANAGE = [sys.executable, "-c", "import time; time.sleep(60)", "--"]
step = launcher._console_step("watch_events")
print(step.pid, flush=True)
time.sleep(60)
"""


@linux_only
def test_the_event_lines_die_with_a_launcher_killed_outright():
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True)
    step = int(stand_in.stdout.readline())
    try:
        stand_in.kill()
        stand_in.wait()
        deadline = time.monotonic() + 10
        while not _gone(step) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(step)
    finally:
        stand_in.stdout.close()
        if not _gone(step):
            os.kill(step, signal.SIGKILL)


# A start-up step that notes its name and the signal it gets when its parent dies (PR_GET_PDEATHSIG).
NOTES_ITS_DEATH_SIGNAL = (
    "import ctypes, sys\n"
    "death_signal = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(death_signal), 0, 0, 0)\n"
    "open(sys.argv[1], 'a').write(f'{sys.argv[2]} {death_signal.value}\\n')"
)


@linux_only
def test_the_start_up_steps_die_with_a_launcher_killed_outright(started, monkeypatch, tmp_path):  # noqa: F811
    notes = tmp_path / "steps"
    monkeypatch.setattr(launcher, "MANAGE", [sys.executable, "-c", NOTES_ITS_DEATH_SIGNAL, str(notes)])
    monkeypatch.setattr(launcher, "_answers", lambda url: os.kill(os.getpid(), signal.SIGINT) or False)
    assert _serve() == 0
    steps = dict(line.split() for line in notes.read_text().splitlines())
    assert set(steps) == {"migrate", "bootstrap_admin", "requeue_engines"}
    assert set(steps.values()) == {str(int(signal.SIGTERM))}

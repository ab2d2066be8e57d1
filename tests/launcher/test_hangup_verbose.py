"""`make run --verbose` cut off by SIGHUP (the terminal closed, the SSH session lost): the children's last
lines, followed to a terminal that is gone, fail to be written (EIO), and the launcher stops what it started
all the same, the embedded servers last."""

import io
import os
import signal
import sys

from portfolio import commands, launcher, runlogs
from serving.processes import free_port
from tests.launcher.test_launcher import data_dir, started  # noqa: F401

# A server that says a last line as SIGTERM stops it: the line the launcher follows to the gone terminal.
SAYS_GOODBYE = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "def stop(*_):\n    print('shutting down', flush=True); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\nprint('up', flush=True)\ntime.sleep(120)",
]


class Terminal(io.StringIO):
    """A terminal that fails every write with EIO once hung up, as a closed one does."""

    hung = False

    def write(self, text):
        if self.hung:
            raise OSError(5, "Input/output error")
        return super().write(text)

    def flush(self):
        if self.hung:
            raise OSError(5, "Input/output error")


def test_a_verbose_run_hung_up_still_stops_the_embedded_servers(started, monkeypatch):  # noqa: F811
    for server in ("web", "worker", "beat"):
        monkeypatch.setattr(commands, f"{server}_command", lambda *args: SAYS_GOODBYE)
    terminal = Terminal()

    def hang_up(url):
        terminal.hung = True
        os.kill(os.getpid(), signal.SIGHUP)
        return False

    monkeypatch.setattr(launcher, "_answers", hang_up)
    monkeypatch.setattr(sys, "stdout", terminal)
    port = free_port("127.0.0.1")
    assert launcher.run_all(host="127.0.0.1", port=port, demo=False, verbose=True) == 0
    assert all(process.poll() is not None for process in started.processes)
    assert started.calls[-2:] == ["stop redis", "stop postgres"]


def test_a_follower_whose_terminal_is_gone_stops_writing_without_failing(tmp_path):
    terminal = Terminal()
    follower = runlogs.Follower(terminal)
    log = runlogs.open_log(tmp_path, "web")
    follower.follow("web", tmp_path / "web.log")
    log.write(b"GET / 200\n")
    follower.pump()
    terminal.hung = True
    log.write(b"shutting down\n")
    follower.pump()  # the run goes on: the line is in web.log
    follower.close()
    assert terminal.getvalue() == "web | GET / 200\n"
    log.close()

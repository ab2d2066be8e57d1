"""What `portfolio run` and every process it starts make in the data folder is its user's only: the folders
an agent makes mid-run (engines/, training/, uploads/) and the files in them, and the logs. The data folder's
own mode closes only what exists as a server starts, and run as root, others may pass through it (0711). The
embedded servers, each setting its socket's mode itself, still answer."""

import os
import signal
import stat
import sys

from portfolio import commands, embedded, launcher
from tests.launcher.test_embedded_permissions import _checkpoint, as_root, root_data  # noqa: F401
from tests.launcher.test_launcher import _serve, data_dir, started  # noqa: F401

# A beat stand-in that makes a folder and a file in it, as an agent puts an engine's weights under engines/.
MAKES_WEIGHTS = "import os, sys, time; os.makedirs(sys.argv[1]); open(sys.argv[1] + '/weights', 'w').close(); time.sleep(120)"


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_what_the_run_and_its_children_make_is_closed_to_other_users(data_dir, started, monkeypatch):  # noqa: F811
    engine = data_dir / "engines" / "7"
    monkeypatch.setattr(
        commands, "beat_command", lambda *args: [sys.executable, "-c", MAKES_WEIGHTS, str(engine)]
    )

    def answers(url):
        if (engine / "weights").exists():
            os.kill(os.getpid(), signal.SIGINT)
        return False

    monkeypatch.setattr(launcher, "_answers", answers)
    umask = os.umask(0o022)  # a usual umask: only the launcher's can close what is made
    try:
        assert _serve() == 0
        assert _umask() == 0o022  # put back for a caller that goes on
    finally:
        os.umask(umask)
    assert _mode(data_dir / "engines") == _mode(engine) == 0o700
    assert _mode(engine / "weights") == 0o600
    assert _mode(data_dir / "logs") == 0o700 and _mode(data_dir / "logs" / "web.log") == 0o600


@as_root
def test_under_the_launchers_umask_the_embedded_servers_answer(root_data):  # noqa: F811
    import redis

    umask = os.umask(0o077)
    try:
        url = embedded.ensure_postgres(root_data)
        embedded.ensure_redis(root_data)
    finally:
        os.umask(umask)
    _checkpoint(url)
    assert redis.Redis(unix_socket_path=str(embedded.redis_socket(root_data))).ping()

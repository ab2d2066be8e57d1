"""`portfolio run` (`make run`): the whole platform on one machine.

Starts the embedded PostgreSQL and Redis when no URLs are configured, migrates, creates the admin account
(password printed once, kept in a file only this user can read), seeds the demo portfolio, then runs the
web server, a Celery worker (control queue and this machine's node queue), a Celery worker for the long
control tasks (queue ``control.long``: eval runs, merges, imports, ingests) and Celery beat.

The terminal shows the start-up, then one line per event a person waits for (``manage.py watch_events``:
an engine ready or failed, an adapter loaded, a fine-tune finished; and the demo's first answer). Each process logs to ``<data>/logs/<process>.log``; ``--verbose``
follows them live (``portfolio.runlogs``). "ready" is said once the web server listens and the demo
endpoint answers, with a summary: where to sign in, the endpoints, the API docs, billing, and a call to copy with a
fresh demo API key, and the portfolio page (where the demo's ticket-routing task shows its candidates once the
demo fine-tune has finished and its eval runs have scored them). Ctrl-C (or SIGTERM, or SIGHUP: the terminal
closed, the SSH session lost) stops everything it started, the embedded servers last. Data is
kept for next time; the replicas of the last run start again (``manage.py requeue_engines``). On Linux the web
server, workers, beat and the start-up and console steps also get SIGTERM if the launcher itself is killed
(SIGKILL), which leaves no clean-up.

Its exit status says how it ended: 0 when the person stopped it (Ctrl-C, SIGTERM or SIGHUP once the servers
run: the normal way to end it); 1 when a start-up step failed or the web server, a worker or beat exited on its
own (a crash), when the port is taken (checked before anything starts: another `make run` there would answer
the health check in this one's place), or when the data folder's path holds a space (the embedded PostgreSQL's
``pg_ctl`` cannot take one); 130 when Ctrl-C interrupted the start-up steps, 143 when SIGTERM did, 129 when
SIGHUP did (128 + the signal, as a shell reports a process the signal ended).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psutil

from portfolio import commands, direct_http, embedded, runlogs
from portfolio.envparse import Env

STOP_GRACE_SECONDS = 20
LISTEN_TIMEOUT = 120
MANAGE = [sys.executable, "-m", "portfolio.cli", "manage"]
# The person's ways to stop it: Ctrl-C, SIGTERM, and SIGHUP (the terminal closed, the SSH session lost).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StartupFailed(Exception):
    pass


class Terminated(Exception):
    """SIGTERM or SIGHUP (``signum``) during the start-up steps: they are cut short, as Ctrl-C cuts them
    (`KeyboardInterrupt`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class FolderInUse(Exception):
    """Another `portfolio run` holds the data folder's run lock; its pid (or "?") is the message."""


@contextlib.contextmanager
def run_lock(data_dir: Path) -> Iterator[None]:
    """The data folder's run lock, held (with this pid in it) for the block; `FolderInUse` if another has it.

    One launcher per data folder: a second one would attach to the first one's servers, then stop them, and
    its engines and trainers, as it exits; `make clean-data` would stop them and delete the folder under it.
    """
    with open(data_dir / "run.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise FolderInUse(lock.read().strip() or "?") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def stop_work_under(data_dir: Path) -> None:
    """Stop the engines and fine-tune trainers working in ``data_dir`` (each in a process group of its own).
    The launcher does it as it exits (it owns this machine's engines: they start again next time; a trainer's
    job resumes from its checkpoint); `make clean-data` does it for those a crashed launcher left behind."""
    from serving import processes

    engines = processes.all_engines(under=data_dir) + processes.leaderless(under=data_dir)
    for _, engine in engines:  # two of one replica included, and what dead leaders left
        processes.stop(engine, grace=15)
    for trainer in processes.trainers_under(data_dir):
        processes.stop(trainer, grace=10)


def _say(message: str) -> None:
    _show(f"[portfolio] {message}")


def _show(text: str, end: str = "\n") -> None:
    # After SIGHUP the terminal may be gone (EIO): what is left to say must not cut the clean-up short.
    with contextlib.suppress(OSError):
        print(text, end=end, flush=True)


def _dying_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent SIGTERM when this process dies, even by SIGKILL (Linux's
    ``PR_SET_PDEATHSIG``); None elsewhere, or where libc has no ``prctl``: there the launcher's own clean-up
    is the only one. libc is looked up here, before the fork: the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the call: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def start_server(command: list[str], log: IO[bytes], env: dict[str, str] | None = None) -> subprocess.Popen:
    """The web server, a worker or beat, logging to ``log``, stopped with the launcher however it ends."""
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_dying_with_this_process()
    )


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the web server could not listen on ``host:port`` (another server has the port), for the person; None
    if it can. Bound as uvicorn binds it (SO_REUSEADDR: a port the last run left in TIME_WAIT is free), then let
    go. The web server itself would find out only once Django is loaded, and until then the health check would
    have another server's answer: another `make run`'s, on another data folder, taken for this one's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:  # socket.gaierror included: a host name that does not resolve
        other = port + 1 if port < 65535 else 8000
        how = f"pick another port with PORTFOLIO_PORT (`make run PORTFOLIO_PORT={other}`, `portfolio run --port {other}`)"
        if exc.errno == errno.EADDRINUSE:
            return (
                f"port {port} on {host} is in use (another `make run`, or another program): stop it, or {how}"
            )
        return f"cannot listen on {host} port {port} ({exc.strerror or exc}): set PORTFOLIO_HOST, or {how}"
    return None


def _answers(url: str) -> bool:
    try:
        # Straight to it: with a corporate HTTP_PROXY set (for the Hub) and NO_PROXY not naming this host, the
        # proxy answered instead, and the server it could not reach was never seen up.
        with direct_http.urlopen(urllib.request.Request(f"{url}healthz"), timeout=2) as response:  # noqa: S310
            return response.status == 200
    except OSError:
        return False


def _listens(server: subprocess.Popen, port: int) -> bool:
    """Whether ``server`` (or a process it started) listens on ``port``: the answer on the port is this run's,
    not that of a server that took the port after the check (which this one then failed to bind)."""
    try:
        process = psutil.Process(server.pid)
        for each in (process, *process.children(recursive=True)):
            for connection in each.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
                    return True
    except psutil.NoSuchProcess:
        return False  # it exited: the loop says so
    except psutil.AccessDenied:
        return True  # where a platform does not show a process's sockets, the answer is trusted as before
    return False


def run_all(*, host: str, port: int, demo: bool = True, verbose: bool = False) -> int:
    # The embedded superuser database would pass the production guards of settings, and the demo seeds an
    # unlimited API key: production runs its processes on its own PostgreSQL and Redis instead.
    if Env().choice("PORTFOLIO_ENV", "development", {"development", "production"}) == "production":
        _say(
            "`portfolio run` is the one-machine launcher (embedded PostgreSQL and Redis, demo data) and does not "
            "run with PORTFOLIO_ENV=production: run `portfolio migrate`, then `portfolio web`, `portfolio worker`, "
            "`portfolio worker --long`, `portfolio node-agent` and `portfolio beat`, with DATABASE_URL and REDIS_URL set"
        )
        return 1
    data_dir = commands.data_dir()
    if not os.environ.get("DATABASE_URL") and any(char.isspace() for char in str(data_dir)):
        _say(
            f"the data folder {data_dir} has a space in its path, which the embedded PostgreSQL's pg_ctl cannot "
            "take: set PORTFOLIO_DATA_DIR to a folder without one"
        )
        return 1
    if not os.environ.get("DATABASE_URL") and (why := embedded.postgres_refusal(data_dir)) is not None:
        _say(why)
        return 1
    # What this run and its children make (logs; engines/, training/, uploads/ made on the way) is this user's
    # only: the data folder's own mode closes only what exists as a server starts, and run as root, others
    # may pass through it (0711). The embedded servers set their sockets' modes themselves.
    umask = os.umask(0o077)
    try:
        embedded.data_folder(data_dir)  # uploaded datasets, model weights, logs: this user's only
        with run_lock(data_dir):
            if (why := _cannot_listen(host, port)) is not None:  # checked before anything starts
                _say(f"{why}; nothing was started")
                return 1
            return _run(data_dir, host=host, port=port, demo=demo, verbose=verbose)
    except FolderInUse as exc:
        _say(
            f"already running on {data_dir} (pid {exc}): stop it first, or set PORTFOLIO_DATA_DIR to another "
            "folder"
        )
        return 1
    finally:
        os.umask(umask)  # put back, as the signal handlers are, for a caller that goes on (the tests)


def _run(data_dir: Path, *, host: str, port: int, demo: bool, verbose: bool) -> int:
    os.environ["PORTFOLIO_DATA_DIR"] = str(data_dir)
    logs = data_dir / "logs"
    started_embedded = []
    setup_log = runlogs.open_log(logs, "setup")
    log_files: list[IO[bytes]] = [setup_log]
    follower = runlogs.Follower(sys.stdout)

    def manage(*args: str, show: bool = False) -> None:
        """A start-up step; what it prints goes to setup.log unless it is for the person (or --verbose)."""
        to_file = not (show or verbose)
        step = subprocess.run(
            [*MANAGE, *args],
            stdout=setup_log if to_file else None,
            stderr=subprocess.STDOUT if to_file else None,
            preexec_fn=_dying_with_this_process(),
        )
        if step.returncode:
            raise StartupFailed(" ".join(args))

    children: dict[str, subprocess.Popen] = {}  # web, workers, beat: any of them exiting stops everything
    oneshots: dict[str, subprocess.Popen] = {}  # the demo's steps: a failure is reported, not fatal
    stopping = False  # SIGINT, SIGTERM or SIGHUP: the person stops it (exit status 0 once it serves)
    starting = True  # until the servers run, SIGTERM or SIGHUP cuts the start-up short (`Terminated`)
    status = 0

    def stop(signum, _frame):
        nonlocal stopping
        cut_short = starting and not stopping
        stopping = True
        if cut_short:
            raise Terminated(signum)

    previous_handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        # Inside the try, each noted before it starts: one that fails (Redis) or is interrupted half-way still
        # has the launcher stop what came up on the way out (stopping one that is not up does nothing).
        if not os.environ.get("DATABASE_URL"):
            _say(f"starting embedded PostgreSQL in {data_dir / 'pgdata'}")
            started_embedded.append("postgres")
            os.environ["DATABASE_URL"] = embedded.ensure_postgres(data_dir)
        if not os.environ.get("REDIS_URL"):
            _say(f"starting embedded Redis in {data_dir / 'redis'}")
            started_embedded.append("redis")
            os.environ["REDIS_URL"] = embedded.ensure_redis(data_dir)
        _say("migrating the database")
        manage("migrate", "--noinput")
        manage("bootstrap_admin", show=True)
        if demo:
            _say("seeding the demo portfolio: organisation, SmolLM2-135M-Instruct, a ticket-routing dataset")
            manage("seed_demo")
            manage("import_demo_model")
            manage("seed_demo_dataset")
        node = commands.node_name()
        os.environ["PORTFOLIO_NODE_NAME"] = node
        manage("requeue_engines", "--node", node)  # engines stopped with the last run start again
        # The prompt box, the demo's first answer and distillation reach the gateway in the web process below.
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared, not bound
        url = f"http://{'[' + local + ']' if ':' in local else local}:{port}/"
        os.environ.setdefault("PORTFOLIO_GATEWAY_URL", url.rstrip("/"))
        os.environ["PORTFOLIO_NODE_AGENT"] = "1"  # the local worker is also this machine's node agent
        servers = {
            "web": commands.web_command(host, port, 1),
            "worker": commands.worker_command(["control", f"node.{node}"], 2, f"local@{node}"),
            # Eval runs, merges, imports and ingests: their own worker, so none holds up the periodic work.
            "long-worker": commands.worker_command(["control.long"], 2, f"long@{node}"),
            "beat": commands.beat_command(str(data_dir / "celerybeat-schedule")),
        }
        # Only the local worker is this machine's node agent: a second heartbeat loop in the long worker would
        # reconcile the same engines at the same time (and take fine-tunes placed here).
        environments = {"long-worker": {**os.environ, "PORTFOLIO_NODE_AGENT": "0"}}
        for name, command in servers.items():
            _say(f"starting {name}")
            log = runlogs.open_log(logs, name)
            log_files.append(log)
            children[name] = start_server(command, log, environments.get(name))
            if verbose:
                follower.follow(name, logs / f"{name}.log")
        _say(f"logs: {logs}/" + ("" if verbose else " (`portfolio run --verbose` shows them live)"))
        starting = False  # the servers run: SIGTERM or SIGHUP, as Ctrl-C, now ends the loop below (status 0)
        # Ctrl-C ends the loop below even where the shell started us with SIGINT ignored (in the background).
        signal.signal(signal.SIGINT, stop)
        listening, listen_deadline = False, time.monotonic() + LISTEN_TIMEOUT
        while not stopping:
            follower.pump()
            exited = [name for name, child in children.items() if child.poll() is not None]
            # Ctrl-C reaches the children too: one that exits on it is not a failure.
            if exited and not stopping:
                for name in exited:
                    _say(f"{name} exited with status {children[name].returncode}; stopping everything")
                    if not verbose:
                        _show(runlogs.tail(logs / f"{name}.log"))
                status = 1
                break
            if not listening and _answers(url) and _listens(children["web"], port):
                listening = True
                oneshots["events"] = _console_step("watch_events")
                if demo:
                    _say(f"web server listening on {url}; deploying the demo model")
                    oneshots["deploy"] = _console_step("deploy_demo", "--wait-ready", "900")
                else:
                    _ready(url, data_dir, demo_key=False)
            elif not listening and time.monotonic() > listen_deadline:
                _say(f"the web server does not answer on {url} yet; see {logs / 'web.log'}")
                listen_deadline = float("inf")
            for name, oneshot in list(oneshots.items()):
                if oneshot.poll() is None:
                    continue
                del oneshots[name]
                if name == "deploy" and oneshot.returncode == 0:
                    _ready(url, data_dir, demo_key=True)
                    oneshots["finetune"] = _console_step("finetune_demo")
                elif name == "deploy":
                    _say("the demo deployment did not come up (see above); the platform keeps running")
                    _ready(url, data_dir, demo_key=False)
                elif name == "finetune" and oneshot.returncode != 0:
                    _say("the demo fine-tune did not finish (see above); the platform keeps running")
                elif name == "finetune":
                    _say(
                        f"portfolio: {url}portfolio/ shows the ticket-routing task, its candidates and a hint"
                    )
                elif name == "events":
                    _say("the event lines stopped (see above); the platform keeps running")
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C before the servers run (then it only sets `stopping`)
        starting = False
        status = 130
    except Terminated as exc:
        status = 128 + exc.signum
    except StartupFailed as exc:
        starting = False
        _say(f"start-up step failed: {exc}")
        if not verbose:
            _show(runlogs.tail(logs / "setup.log"))
            _say(f"the whole output is in {logs / 'setup.log'}")
        status = 1
    finally:
        starting = False  # a SIGTERM or SIGHUP now (or a second one) does not cut the stopping short
        signal.signal(signal.SIGINT, stop)  # nor does a second Ctrl-C
        _say("stopping")
        running = [*oneshots.values(), *children.values()]
        for child in running:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        follower.close()
        for log in log_files:
            log.close()
        stop_work_under(data_dir)
        if "redis" in started_embedded:
            embedded.stop_redis(data_dir)
        if "postgres" in started_embedded:
            embedded.stop_postgres(data_dir)
        for sig, handler in previous_handlers.items():
            if handler is not None:  # None: not installed from Python, nothing to put back
                signal.signal(sig, handler)
        _say("stopped")
    return status


def _console_step(*args: str) -> subprocess.Popen:
    """A command that writes to the terminal only what a person waits for: the events (an engine ready, a
    fine-tune finished), the demo's first answer and adapter. In a session of its own, Ctrl-C in the
    terminal does not reach it: it is stopped, quietly, with everything else; and as the servers, it dies
    with a launcher killed outright (``watch_events`` would otherwise poll forever)."""
    env = {**os.environ, "PORTFOLIO_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [*MANAGE, *args], env=env, start_new_session=True, preexec_fn=_dying_with_this_process()
    )


def _ready(url: str, data_dir: Path, *, demo_key: bool) -> None:
    """ "ready", then what to do next (``manage.py run_summary``: endpoints from the database, a fresh key)."""
    args = ["run_summary", "--url", url]
    if demo_key:
        args += ["--demo-key-file", str(data_dir / "demo-api-key")]
    summary = subprocess.run([*MANAGE, *args], stdout=subprocess.PIPE, text=True)
    _say(f"ready: {url}  (Ctrl-C stops everything)")
    _show(summary.stdout, end="")
    _show(f"  portfolio: {url}portfolio/ (each task's production endpoint, quality, latency, cost)")

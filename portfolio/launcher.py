"""`portfolio run` (`make run`): the whole platform on one machine.

Starts the embedded PostgreSQL and Redis when no URLs are configured, migrates, creates the admin
account (password printed once, kept in a file only this user can read), seeds the demo portfolio, then
runs the web server, a Celery worker (control queue and this machine's node queue) and Celery beat.
Ctrl-C (or SIGTERM) stops everything it started, the embedded servers last. Data is kept for next time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from portfolio import commands, embedded

STOP_GRACE_SECONDS = 20


def _say(message: str) -> None:
    print(f"[portfolio] {message}", flush=True)


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "portfolio.cli", "manage", *args], check=True)


def run_all(*, host: str, port: int, demo: bool = True) -> int:
    data_dir = commands.data_dir()
    os.environ["PORTFOLIO_DATA_DIR"] = str(data_dir)
    started_embedded = []
    if not os.environ.get("DATABASE_URL"):
        _say(f"starting embedded PostgreSQL in {data_dir / 'pgdata'}")
        os.environ["DATABASE_URL"] = embedded.ensure_postgres(data_dir)
        started_embedded.append("postgres")
    if not os.environ.get("REDIS_URL"):
        _say(f"starting embedded Redis in {data_dir / 'redis'}")
        os.environ["REDIS_URL"] = embedded.ensure_redis(data_dir)
        started_embedded.append("redis")

    children: list[subprocess.Popen] = []  # web, worker, beat: any of them exiting stops everything
    oneshots: list[subprocess.Popen] = []  # the demo deployment: its failure is reported, not fatal
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        _manage("migrate", "--noinput")
        _manage("bootstrap_admin")
        if demo:
            _manage("seed_demo")
            _manage("import_demo_model")
            _manage("seed_demo_dataset")
        node = commands.node_name()
        os.environ["PORTFOLIO_NODE_NAME"] = node
        # The prompt box, the demo's first answer and distillation reach the gateway in the web process below.
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared, not bound
        os.environ.setdefault(
            "PORTFOLIO_GATEWAY_URL", f"http://{'[' + local + ']' if ':' in local else local}:{port}"
        )
        os.environ["PORTFOLIO_NODE_AGENT"] = "1"  # the local worker is also this machine's node agent
        servers = {
            "web": commands.web_command(host, port, 1),
            "worker": commands.worker_command(["control", f"node.{node}"], 2, f"local@{node}"),
            "beat": commands.beat_command(str(data_dir / "celerybeat-schedule")),
        }
        for name, command in servers.items():
            _say(f"starting {name}")
            children.append(subprocess.Popen(command))
        _say(f"ready: http://{host}:{port}/  (Ctrl-C stops everything)")
        # Ctrl-C ends the loop below even where the shell started us with SIGINT ignored (in the background).
        signal.signal(signal.SIGINT, stop)
        if demo:
            # Waits for the local node agent, deploys the demo model, then reports its first answer.
            manage = f"{sys.executable} -m portfolio.cli manage"
            oneshots.append(
                subprocess.Popen(  # noqa: S602 - fixed command line of this program
                    f"{manage} deploy_demo --wait-ready 900 && {manage} finetune_demo", shell=True
                )
            )
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    _say(f"a process exited with status {child.returncode}; stopping everything")
                    stopping = True
            for oneshot in [o for o in oneshots if o.poll() is not None]:
                if oneshot.returncode != 0:
                    _say("the demo deployment did not come up (see above); the platform keeps running")
                oneshots.remove(oneshot)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except subprocess.CalledProcessError as exc:
        _say(f"start-up step failed: {' '.join(exc.cmd[4:])} (exit {exc.returncode})")
        return 1
    finally:
        _say("stopping")
        for child in [*oneshots, *children]:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in [*oneshots, *children]:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        # `portfolio run` owns this machine's engines: they stop with it (the agent restarts them next time).
        from serving import processes

        for engine in processes.engines_on_this_machine(under=data_dir).values():
            processes.stop(engine, grace=15)
        for trainer in processes.trainers_under(data_dir):
            processes.stop(trainer, grace=10)  # its job resumes from its checkpoint next time
        if "redis" in started_embedded:
            embedded.stop_redis(data_dir)
        if "postgres" in started_embedded:
            embedded.stop_postgres(data_dir)
        _say("stopped")
    return 0

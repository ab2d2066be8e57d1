"""`portfolio` command: one entry point for every process the platform runs.

portfolio run          everything on this machine, with embedded PostgreSQL and Redis (`make run`)
portfolio web          the ASGI web server (UI, REST API, later the gateway)
portfolio worker       a Celery worker for the "control" queue
portfolio node-agent   a Celery worker for this machine's "node.<name>" queue
portfolio beat         the Celery beat scheduler
portfolio migrate      migrations as the database owner, then the application role's grants
portfolio manage ...   Django's manage.py
"""

from __future__ import annotations

import argparse
import os
import sys

from portfolio import commands

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _prepare_shared_metrics() -> None:
    """Several web workers: Prometheus metrics are aggregated across them through a shared folder."""
    import shutil

    folder = commands.data_dir() / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portfolio", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole platform on this machine (embedded defaults)")
    run.add_argument("--host", default=os.environ.get("PORTFOLIO_HOST", "127.0.0.1"))
    run.add_argument("--port", type=int, default=int(os.environ.get("PORTFOLIO_PORT", "8000")))
    run.add_argument("--no-demo", action="store_true", help="skip the demo portfolio")
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show every process's log live (default: PORTFOLIO_VERBOSE; they are always in <data>/logs/)",
    )

    web = sub.add_parser("web", help="the ASGI web server")
    # Loopback unless told otherwise: on a bare machine `/v1` would otherwise take API keys in clear text on
    # every interface, past the TLS proxy. The image sets PORTFOLIO_HOST=0.0.0.0 (its network is the compose one).
    web.add_argument("--host", default=os.environ.get("PORTFOLIO_HOST", "127.0.0.1"))
    web.add_argument("--port", type=int, default=int(os.environ.get("PORTFOLIO_PORT", "8000")))
    web.add_argument("--workers", type=int, default=int(os.environ.get("PORTFOLIO_WEB_WORKERS", "2")))

    worker = sub.add_parser("worker", help="Celery worker for the control queue")
    worker.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("PORTFOLIO_WORKER_CONCURRENCY", "2"))
    )

    agent = sub.add_parser("node-agent", help="Celery worker for this machine's node queue")
    agent.add_argument("--name", default=None, help="node name (default: PORTFOLIO_NODE_NAME or host name)")
    agent.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("PORTFOLIO_AGENT_CONCURRENCY", "2"))
    )

    sub.add_parser("beat", help="Celery beat scheduler")
    sub.add_parser("migrate", help="apply migrations (as the owner role), then grant the application role")
    manage = sub.add_parser("manage", help="Django management commands", add_help=False)
    manage.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from portfolio.envparse import Env
        from portfolio.launcher import run_all

        verbose = args.verbose or Env().flag("PORTFOLIO_VERBOSE", False)
        sys.exit(run_all(host=args.host, port=args.port, demo=not args.no_demo, verbose=verbose))
    if args.command == "web":
        if args.workers > 1:
            _prepare_shared_metrics()
        _exec(commands.web_command(args.host, args.port, args.workers))
    if args.command == "worker":
        _exec(commands.worker_command(["control"], args.concurrency, f"control@{commands.node_name()}"))
    if args.command == "node-agent":
        name = args.name or commands.node_name()
        os.environ["PORTFOLIO_NODE_NAME"] = name
        os.environ["PORTFOLIO_NODE_AGENT"] = "1"
        _exec(commands.worker_command([f"node.{name}"], args.concurrency, f"agent@{name}"))
    if args.command == "beat":
        _exec(commands.beat_command())
    if args.command == "migrate":
        import django
        from django.core.management import call_command

        django.setup()
        from portfolio import dbroles

        call_command("migrate", interactive=False)
        for statement in dbroles.grant_app_role():
            print(f"  {statement}")
        # The owner keeps the usage events' monthly partitions a year ahead and drops those past retention
        # (the application role, which runs the daily task, may not).
        from serving.gateway import partitions

        for name in partitions.ensure(ahead=12):
            print(f"  created partition {name}")
        for name in partitions.drop_expired():
            print(f"  dropped partition {name} (past PORTFOLIO_USAGE_RETENTION_MONTHS)")
        # Versions imported before imports read the architecture get it from their stored headers (a few KB
        # each), so an upgrade needs no extra step; those already read are not touched.
        from portfolio.registry.reinspection import read_missing_architectures

        read_missing_architectures(log=lambda line: print(f"  {line}"))
    if args.command == "manage":
        from django.core.management import execute_from_command_line

        execute_from_command_line(["portfolio manage", *args.args])


if __name__ == "__main__":
    main()

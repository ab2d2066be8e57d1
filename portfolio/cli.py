"""`portfolio` command: one entry point for every process the platform runs.

portfolio run          everything on this machine, with embedded PostgreSQL and Redis (`make run`)
portfolio web          the ASGI web server (UI, REST API, later the gateway)
portfolio worker       a Celery worker for the "control" queue (`--long`: for "control.long", the long tasks)
portfolio node-agent   a Celery worker for this machine's "node.<name>" queue
portfolio beat         the Celery beat scheduler
portfolio migrate      migrations as the database owner, then the application role's grants
portfolio clean-data   stop what a crashed `portfolio run` left running, then delete its data folder
portfolio manage ...   Django's manage.py (everything after `manage` is Django's, `--help` included)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

from portfolio import commands
from portfolio.envparse import Env

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

# Far above what one machine runs: a typo (`--workers 400`) is a one-line refusal, not a fork storm.
MAX_WEB_WORKERS = 64
MAX_CONCURRENCY = 256


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


def _bounded(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``minimum`` to ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or maximum is not None and value > maximum:
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: {bounds}")
        return value

    return parse


def _env_option(
    parser: argparse.ArgumentParser, name: str, variable: str, default: int, maximum: int | None = None
) -> None:
    """``--name``, from 1 to ``maximum``, defaulting to ``variable`` (else ``default``). `parse_args` reads the
    variable only for the sub-command that takes the option: a bad PORTFOLIO_PORT stops `web`, not `migrate`."""
    parser.add_argument(f"--{name}", type=_bounded(1, maximum), help=f"default: {variable}, else {default}")
    parser.set_defaults(**{f"_env_{name}": (variable, default, maximum)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portfolio", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole platform on this machine (embedded defaults)")
    run.add_argument("--host", default=os.environ.get("PORTFOLIO_HOST", "127.0.0.1"))
    _env_option(run, "port", "PORTFOLIO_PORT", 8000, maximum=65535)
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
    _env_option(web, "port", "PORTFOLIO_PORT", 8000, maximum=65535)
    _env_option(web, "workers", "PORTFOLIO_WEB_WORKERS", 2, maximum=MAX_WEB_WORKERS)

    worker = sub.add_parser("worker", help="Celery worker for the control queue")
    _env_option(worker, "concurrency", "PORTFOLIO_WORKER_CONCURRENCY", 2, maximum=MAX_CONCURRENCY)
    worker.add_argument(
        "--long",
        action="store_true",
        help="consume the long control tasks' queue (eval runs, merges, imports, ingests) instead",
    )

    agent = sub.add_parser("node-agent", help="Celery worker for this machine's node queue")
    agent.add_argument("--name", default=None, help="node name (default: PORTFOLIO_NODE_NAME or host name)")
    _env_option(agent, "concurrency", "PORTFOLIO_AGENT_CONCURRENCY", 2, maximum=MAX_CONCURRENCY)

    sub.add_parser("beat", help="Celery beat scheduler")
    sub.add_parser("migrate", help="apply migrations (as the owner role), then grant the application role")
    sub.add_parser(
        "clean-data", help="stop what a crashed `portfolio run` left running, delete its data folder"
    )
    # Listed for --help only: `main` hands everything after `manage` to Django before argparse sees it.
    sub.add_parser("manage", help="Django management commands", add_help=False)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The sub-command's options, those left unset read from the environment (ImproperlyConfigured if bad)."""
    args = build_parser().parse_args(argv)
    for key, (variable, default, maximum) in [(k, v) for k, v in vars(args).items() if k.startswith("_env_")]:
        name = key.removeprefix("_env_")
        if getattr(args, name) is None:
            setattr(args, name, Env().integer(variable, default, minimum=1, maximum=maximum))
        delattr(args, key)
    if args.command == "run":
        args.verbose = args.verbose or Env().flag("PORTFOLIO_VERBOSE", False)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["manage"]:  # `portfolio manage --help` is Django's help, not argparse's refusal
            _manage(argv[1:])
            return
        args = parse_args(argv)
        if args.command == "run":
            from portfolio.launcher import run_all

            # What started is stopped before a bad setting (PORTFOLIO_ENV...) comes out of run_all.
            sys.exit(run_all(host=args.host, port=args.port, demo=not args.no_demo, verbose=args.verbose))
        _dispatch(args)
    except ImproperlyConfigured as exc:  # a bad setting, whichever sub-command read it
        sys.exit(f"portfolio: {exc}")  # one line, no traceback


def _manage(argv: list[str]) -> None:
    from django.core.management import execute_from_command_line

    # Loaded here, where a bad one is a line: Django's own loading would print its traceback, or for a command
    # of the platform's apps call it unknown.
    _settings_read()
    execute_from_command_line(["portfolio manage", *argv])


def _dispatch(args: argparse.Namespace) -> None:
    """Every sub-command but `run` and `manage`; the settings each reads before its exec are read strictly,
    and then every other setting (``_server``)."""
    if args.command == "web":
        command = commands.web_command(args.host, args.port, args.workers)  # before any folder is made
        _settings_read()
        if args.workers > 1:
            _prepare_shared_metrics()
        _exec(command)
    if args.command == "worker":
        queue, name = ("control.long", "long") if args.long else ("control", "control")
        _server(commands.worker_command([queue], args.concurrency, f"{name}@{commands.node_name()}"))
    if args.command == "node-agent":
        name = args.name or commands.node_name()
        os.environ["PORTFOLIO_NODE_NAME"] = name
        os.environ["PORTFOLIO_NODE_AGENT"] = "1"
        _server(commands.worker_command([f"node.{name}"], args.concurrency, f"agent@{name}"))
    if args.command == "beat":
        _server(commands.beat_command())
    if args.command == "migrate":
        _migrate()
    if args.command == "clean-data":
        from portfolio import cleandata

        sys.exit(cleandata.main())


def _settings_read() -> None:
    """Every setting, read before a server's exec: a bad one that only Celery or uvicorn read (when they load
    Django) was a traceback of theirs, not a line."""
    from django.conf import settings

    settings.INSTALLED_APPS  # noqa: B018


def _server(argv: list[str]) -> None:
    _settings_read()
    _exec(argv)


def _migrate() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    from portfolio import dbroles

    call_command("migrate", interactive=False)
    for statement in dbroles.grant_app_role():
        print(f"  {statement}")
    # The owner keeps the usage events' monthly partitions a year ahead and drops those past retention
    # (the application role, which runs the daily task, may not). ``ensure`` first gives each month
    # with rows in the default partition its own (an upgrade's history, which migration 0004 put
    # there), so that ``drop_expired`` then drops those past retention too.
    from serving.gateway import partitions

    for name in partitions.ensure(ahead=12):
        print(f"  created partition {name}")
    for name in partitions.drop_expired():
        print(f"  dropped partition {name} (past PORTFOLIO_USAGE_RETENTION_MONTHS)")
    # Versions imported before imports read the architecture get it from their stored headers (a few KB
    # each), so an upgrade needs no extra step; those already read are not touched.
    from portfolio.registry.reinspection import read_missing_architectures

    read_missing_architectures(log=lambda line: print(f"  {line}"))


if __name__ == "__main__":
    main()

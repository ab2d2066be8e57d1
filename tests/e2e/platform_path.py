"""The platform's own path for a model in the end-to-end tests: a folder imported into the registry, the
version deployed by the Celery node agent (the ``node_agent`` fixture), an endpoint (priced in the price book
when asked) and a real gateway in front of it, called with a key of the team."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.utils import timezone

from portfolio.accounts.models import Team
from portfolio.billing import services as billing_services
from portfolio.billing import subjects
from portfolio.billing.choices import PriceKind
from portfolio.registry import services as registry_services
from portfolio.registry import tiny_models
from portfolio.registry.choices import Source, Task, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.tasks import import_version
from serving import services
from serving.choices import PoolKind
from serving.models import Node
from tests.conftest import actor_for
from tests.e2e.agent import ENGINE_READY_TIMEOUT, NODE, ready_replica, wait

# Eager mode (no graph compilation) keeps each engine's start short; tiny models need little else.
ENGINE_ARGS = {"max_model_len": 512, "max_num_seqs": 4, "enforce_eager": True}


def import_root(settings, tmp_path) -> Path:
    """The server folder imports are allowed from (created), set for this test."""
    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    settings.IMPORT_ROOTS[0].mkdir(exist_ok=True)
    return settings.IMPORT_ROOTS[0]


def import_folder(folder: Path, name: str, engineer, team: Team, *, task: str = Task.CHAT) -> ModelVersion:
    """``folder`` (under the import root) registered as version 1 of a new model ``name`` of ``task``."""
    model = registry_services.create_model(actor=engineer, name=name, owner_team=team, task=task)
    version = registry_services.start_import(
        actor=engineer, model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    import_version(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_detail
    return version


def import_tiny(
    family: str, name: str, engineer, team: Team, settings, tmp_path, *, task: str = Task.CHAT
) -> ModelVersion:
    """A tiny random-weight model of ``family`` (``registry.tiny_models``) built and registered."""
    tokenizer = tiny_models.save_demo_tokenizer(tmp_path / "tokenizer")
    folder = tiny_models.build(family, import_root(settings, tmp_path) / name, tokenizer)
    shutil.rmtree(tokenizer)
    version = import_folder(folder, name, engineer, team, task=task)
    assert version.family == family
    return version


@contextmanager
def served(
    org,
    team: Team,
    version: ModelVersion,
    name: str,
    agent_log: Path,
    tmp_path,
    *,
    engine_args: dict | None = None,
    price: dict | None = None,
) -> Iterator[tuple]:
    """The version deployed by the node agent as ``name`` behind an endpoint ``name`` (priced at ``price``,
    rates of the price book, when given): yields (openai SDK client with the team's key, gateway log)."""
    import openai

    from serving.gateway import services as key_services
    from tests.gateway.process import start_gateway, stop_gateway

    admin, engineer = actor_for(org["admin"]), actor_for(org["engineer"])
    services.create_pool(actor=admin, name="local-cpu", kind=PoolKind.CPU)
    node = wait(
        "the node agent to register", lambda: Node.objects.filter(name=NODE).first(), 120, [agent_log]
    )
    deployment = services.create_deployment(
        actor=engineer,
        name=name,
        team=team,
        version=version,
        pool=node.pool,
        args={**ENGINE_ARGS, **(engine_args or {})},
    )
    started = time.monotonic()
    wait(
        f"the {name} replica to become ready",
        lambda: ready_replica(deployment),
        ENGINE_READY_TIMEOUT,
        [agent_log, tmp_path / "node-data" / "engines" / name],
        interval=3,
    )
    print(f"{version.family} ({version.model.task}) engine ready after {time.monotonic() - started:.0f} s")
    services.create_endpoint(actor=admin, name=name, team=team, routes=[{"deployment": name}])
    if price:
        subject = subjects.find(PriceKind.ENDPOINT, name)
        assert subject is not None
        # From this hour's start (a price set without a time starts at the next hour): the calls below are
        # priced by it.
        this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
        billing_services.set_price(actor=admin, subject=subject, effective_from=this_hour, **price)
    _, secret = key_services.create_key(
        actor=admin, team=team, name=f"e2e {name}", monthly_token_budget=100_000
    )
    log = tmp_path / "gateway.log"
    gateway, base = start_gateway(log)
    try:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=120)
        wait(
            "the gateway to route to the endpoint",
            lambda: name in {m.id for m in sdk.models.list()},
            30,
            [log],
        )
        yield sdk, log
    finally:
        stop_gateway(gateway)

"""A real browser on the portfolio page: the task's row with its production endpoint, the hint at the tuned
candidate, "Start canary" pressed, and the rollout on the endpoint's page.

No engine: the eval runs are run by the worker's own code (``runs.execute``) with the one gateway call per
row (``training.evals.gateway.ask``) stood in for, so the page is filled from rows the service layer wrote.
Real scoring through the gateway and vLLM is tests/training/test_eval_runs_gateway.py's."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from serving.choices import PoolKind, RolloutState
from serving.models import ComputePool, Deployment, DeploymentAdapter, Endpoint, EndpointRoute, Rollout
from tests.conftest import PASSWORD, actor_for
from tests.e2e import test_browser
from tests.training.conftest import jsonl, upload
from training import services
from training.choices import DatasetKind
from training.evals import catalogue, gateway, portfolio, runs

pytestmark = pytest.mark.e2e
browser_page = test_browser.browser_page  # the same Chromium page fixture as the other browser tests
QUEUES = ["billing", "technical", "account", "shipping"]


def version(model, number: int, parameters: int | None, base=None) -> ModelVersion:
    return ModelVersion.objects.create(
        model=model,
        number=number,
        kind=VersionKind.ADAPTER if base else VersionKind.BASE,
        base_version=base,
        source=Source.FINE_TUNE if base else Source.HUB,
        status=VersionStatus.READY,
        parameter_count=parameters,
    )


def price(endpoint: Endpoint) -> None:
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(endpoint.pk),
        subject_name=endpoint.name,
        effective_from=timezone.now() - timedelta(days=1),
        input_per_million=Decimal("0.50"),
        output_per_million=Decimal("1.50"),
    )


def stand_in_gateway(client, endpoint_name: str, messages: list[dict], max_tokens: int) -> gateway.Answer:
    """``general`` answers "billing" at length; ``tuned`` answers each ticket's queue in one token."""
    asked = messages[-1]["content"]
    if endpoint_name == "tuned":
        return gateway.Answer(next(q for q in QUEUES if q in asked), 0.05, 40, 1)
    return gateway.Answer("billing", 0.4, 40, 30)


@pytest.fixture
def scored(org, team, monkeypatch, settings, tmp_path):
    """The team's task, served by ``general`` (a 270M base) in production; ``tuned`` (an adapter of a 135M
    base) scored better and cheaper on its eval set."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    engineer = actor_for(org["engineer"])
    artifact = Artifact.objects.create(
        id="b" * 64, store_uri="file:///nowhere", size_bytes=1, file_count=0, files=[]
    )
    model = registry.create_model(actor=engineer, name="router", owner_team=team)
    big = ModelVersion.objects.create(
        model=model,
        number=1,
        source=Source.HUB,
        artifact=artifact,
        status=VersionStatus.READY,
        parameter_count=268_098_176,
    )
    small = version(model, 2, 134_515_008)
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    big_dep = Deployment.objects.create(name="big-dep", owner_team=team, version=big, pool=pool)
    small_dep = Deployment.objects.create(name="small-dep", owner_team=team, version=small, pool=pool)
    lora = DeploymentAdapter.objects.create(
        deployment=small_dep, version=version(model, 3, None, base=small), name="tuned-lora"
    )
    general = Endpoint.objects.create(name="general", owner_team=team)
    EndpointRoute.objects.create(endpoint=general, deployment=big_dep, weight=100)
    tuned = Endpoint.objects.create(name="tuned", owner_team=team)
    EndpointRoute.objects.create(endpoint=tuned, deployment=small_dep, adapter=lora, weight=100)
    price(general)
    price(tuned)
    dataset = services.create_dataset(
        actor=engineer, owner_team=team, name="intents", kind=DatasetKind.CLASSIFICATION
    )
    rows = [{"text": f"Ticket {i}: about {QUEUES[i % 4]}", "label": QUEUES[i % 4]} for i in range(16)]
    made, _ = upload(engineer, dataset, jsonl(*rows), eval_fraction=0.5)
    task = catalogue.create_task(
        actor=engineer, owner_team=team, name="Ticket routing", kind="classification"
    )
    eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=made, source="all")
    portfolio.set_production_endpoint(actor=engineer, task=task, endpoint=general)
    monkeypatch.setattr(gateway, "ask", stand_in_gateway)
    for endpoint in (general, tuned):
        run = runs.start_run(actor=engineer, task=task, eval_set=eval_set, endpoint=endpoint, enqueue=False)
        runs.execute(run.pk)  # what the worker does with the queued run
    return task


@pytest.mark.django_db(transaction=True)
def test_the_portfolio_hints_at_the_tuned_candidate_and_starts_its_canary(
    live_server, org, scored, browser_page
):
    page = browser_page
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("owner")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Portfolio").click()
    page.wait_for_url(f"{live_server.url}/portfolio/")
    row = page.locator("[data-testid=portfolio-row]", has_text="Ticket routing")
    assert "general" in row.inner_text() and "router:v1" in row.inner_text()
    assert "0.25" in row.inner_text()  # general answers "billing": a quarter of the tickets
    hint = page.get_by_test_id("hint-text").inner_text()
    assert hint.startswith("tuned (134.5M): 1.00 at ") and " vs general (268.1M): 0.25 at " in hint

    page.on("dialog", lambda dialog: dialog.accept())  # "Start a canary of tuned on general?"
    page.get_by_role("button", name="Start canary").click()
    page.wait_for_url(f"{live_server.url}/endpoints/general/")
    rollout = page.get_by_test_id("rollout").inner_text()
    assert "small-dep/tuned-lora" in rollout
    started = Rollout.objects.get(endpoint__name="general")
    assert (started.state, started.deployment, started.adapter) == (
        RolloutState.CANARY,
        "small-dep",
        "tuned-lora",
    )

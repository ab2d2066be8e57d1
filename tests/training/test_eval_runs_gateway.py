"""An eval run end to end through the real gateway process (uvicorn serving portfolio.asgi) to a stand-in
engine (tests/gateway/fake_engine.py): each row's prompt reaches the engine, each call is metered to the
task's team under the run's service key, revoked once the run ends, and the run's cost comes from the
endpoint's price in billing."""

from __future__ import annotations

import pytest

from serving.gateway.models import ApiKey, UsageEvent
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import flush_settled
from tests.training.conftest import jsonl, tickets, upload
from training import services
from training.choices import DatasetKind, JobStatus
from training.evals import catalogue, runs

pytestmark = pytest.mark.django_db(transaction=True)
# The gateway tests' fixtures: a real gateway process, and a deployment served by a stand-in engine.
gateway_process = gateway_fixtures.gateway_process
gateway_url = gateway_fixtures.gateway_url
stack = gateway_fixtures.stack


@pytest.fixture
def serve(stack, gateway_url, settings):
    """Eval runs call the test's gateway; ``serve(name)`` is an endpoint ``<name>-ep`` on a deployment of
    its own, listed by the gateway, and the deployment's engines."""
    settings.GATEWAY_INTERNAL_URL = gateway_url

    def served(name: str, **endpoint_options):
        deployment, engines = stack["deployment"](name)
        endpoint = stack["endpoint"](f"{name}-ep", deployment, **endpoint_options)
        gateway_fixtures.wait_for_model(gateway_url, stack["key"](), endpoint.name)
        return endpoint, engines

    return served


@pytest.fixture
def routing_task(engineer, team):
    """A classification task of the team and its eval set of 12 tickets."""
    dataset = services.create_dataset(actor=engineer, owner_team=team, name="tickets", kind=DatasetKind.CHAT)
    version, _ = upload(engineer, dataset, jsonl(*tickets(12)))
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    return task, catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")


def test_an_eval_run_asks_the_endpoint_through_the_gateway_metered_to_the_tasks_team(
    serve, routing_task, engineer, team
):
    endpoint, engines = serve("scorer", price=("1.00", "2.00"))
    task, eval_set = routing_task

    run = runs.start_run(
        actor=engineer,
        task=task,
        eval_set=eval_set,
        endpoint=endpoint,
        row_limit=6,
        concurrency=3,
        max_tokens=4,
        enqueue=False,
    )
    runs.execute(run.pk)
    run.refresh_from_db()

    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    assert (run.rows_done, run.rows_total) == (6, 6)
    asked = [request["messages"][-1]["content"] for request in engines[0].requests]
    prompts = {row["messages"][-2]["content"] for row in tickets(12)}
    assert len(asked) == len(set(asked)) == 6 and set(asked) <= prompts
    scores = run.metrics
    assert scores["accuracy"] == 0.0  # the stand-in engine answers "word word ..."
    assert scores["output_tokens"] == 6 * 4 and scores["latency_p50_ms"] > 0
    expected = (scores["input_tokens"] * 1.0 + scores["output_tokens"] * 2.0) / 1e6 / 6 * 1000
    assert scores["cost_per_1k_requests"] == pytest.approx(expected)
    key = ApiKey.objects.get(name=f"eval run #{run.pk}")
    assert key.team_id == team.pk and key.revoked_at is not None
    flush_settled()
    events = UsageEvent.objects.filter(endpoint="scorer-ep", api_key=key)
    assert events.count() == 6 and {event.team_id for event in events} == {team.pk}


def test_a_judge_scores_each_answer_through_the_gateway_metered_to_the_tasks_team(
    serve, routing_task, engineer, team
):
    endpoint, _ = serve("scorer")
    judge, judge_engines = serve("judge")
    task, eval_set = routing_task

    run = runs.start_run(
        actor=engineer,
        task=task,
        eval_set=eval_set,
        endpoint=endpoint,
        row_limit=4,
        concurrency=2,
        max_tokens=3,
        judge=judge,
        rubric="Names the queue the ticket belongs to.",
        enqueue=False,
    )
    runs.execute(run.pk)
    run.refresh_from_db()

    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    judged = judge_engines[0].requests
    assert len(judged) == 4
    assert all("Names the queue the ticket belongs to." in r["messages"][0]["content"] for r in judged)
    assert all("Answer to grade:\nword word word" in r["messages"][-1]["content"] for r in judged)
    # The stand-in judge babbles ("word word ..."): no readable score, counted, and the run still succeeds.
    assert run.metrics["judge_score"] is None
    assert (run.metrics["judge_scored"], run.metrics["judge_unreadable"]) == (0, 4)
    key = ApiKey.objects.get(name=f"eval run #{run.pk} (judge)")
    assert key.team_id == team.pk and key.scopes == ["judge-ep"] and key.revoked_at is not None
    flush_settled()
    events = UsageEvent.objects.filter(endpoint="judge-ep", api_key=key)
    assert events.count() == 4 and {event.team_id for event in events} == {team.pk}


@pytest.fixture
def cascade_of(stack, gateway_url, settings, team):
    """``cascade_of(small_logprob, prices)``: a cascade ``cascade-ep`` of ``small-ep`` (answering "billing"
    with that log-probability) and ``large-ep``, priced (input, output per million) when given, and the
    large endpoint's engines."""
    from django.db import transaction

    from serving.models import Endpoint

    settings.GATEWAY_INTERNAL_URL = gateway_url

    def make(small_logprob: float, prices: dict | None = None):
        prices = prices or {}
        small, _ = stack["deployment"]("small-dep", answer=lambda body, i: "billing", logprob=small_logprob)
        stack["endpoint"]("small-ep", small, **({"price": prices["small"]} if "small" in prices else {}))
        large, large_engines = stack["deployment"]("large-dep")
        stack["endpoint"]("large-ep", large, **({"price": prices["large"]} if "large" in prices else {}))
        with transaction.atomic():
            cascade = Endpoint.objects.create(
                name="cascade-ep",
                owner_team=team,
                kind="cascade",
                config={"small": "small-ep", "large": "large-ep", "threshold": -1.0},
            )
        gateway_fixtures.wait_for_model(gateway_url, stack["key"](), cascade.name)
        return cascade, large_engines

    return make


def run_on(engineer, routing_task, endpoint, rows: int):
    task, eval_set = routing_task
    run = runs.start_run(
        actor=engineer,
        task=task,
        eval_set=eval_set,
        endpoint=endpoint,
        row_limit=rows,
        max_tokens=4,
        enqueue=False,
    )
    runs.execute(run.pk)
    run.refresh_from_db()
    return run


def test_an_eval_run_of_a_cascade_may_call_the_endpoints_it_calls(cascade_of, engineer, routing_task):
    cascade, large_engines = cascade_of(small_logprob=-0.1)
    run = run_on(engineer, routing_task, cascade, rows=3)
    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    key = ApiKey.objects.get(name=f"eval run #{run.pk}")
    assert sorted(key.scopes) == ["cascade-ep", "large-ep", "small-ep"]
    flush_settled()
    assert UsageEvent.objects.filter(via="cascade-ep", endpoint="small-ep").count() == 3
    assert large_engines[0].requests == [], "confident small answers were kept"


def test_an_eval_run_of_a_cascade_costs_what_billing_charged_for_every_hop(
    cascade_of, engineer, routing_task
):
    """A composite has no price of its own and its answer's usage names the last hop only: the run's cost
    is what billing charged its key for every hop, each at its own endpoint's price."""
    from decimal import Decimal

    prices = {"small": ("1.00", "2.00"), "large": ("10.00", "20.00")}
    cascade, large_engines = cascade_of(small_logprob=-3.0, prices=prices)
    run = run_on(engineer, routing_task, cascade, rows=4)

    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    assert len(large_engines[0].requests) == 4, "every unsure answer escalated"
    key = ApiKey.objects.get(name=f"eval run #{run.pk}")
    flush_settled()
    events = UsageEvent.objects.filter(api_key=key, via="cascade-ep")
    assert sorted(e.endpoint for e in events) == ["large-ep"] * 4 + ["small-ep"] * 4
    charged = sum((e.cost for e in events), Decimal(0))
    large_only = sum((e.cost for e in events if e.endpoint == "large-ep"), Decimal(0))
    assert charged > large_only > 0
    assert run.metrics["billed"] == str(charged)
    assert run.metrics["cost_per_1k_requests"] == pytest.approx(float(charged / 4 * 1000))

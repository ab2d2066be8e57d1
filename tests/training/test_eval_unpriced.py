"""An eval run's cost is what billing charges for its calls: an endpoint billing charges at cost (no price in
force, or a version with no rate at all) is "not priced", never free, so it is on no front and never the
cheaper candidate; a composite is as priced as its hops, each at its own price. The gateway call is stood
in for (as in test_eval_runs.py); a composite's hop events are written as the gateway writes them."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.utils import timezone

from serving.gateway import hop_ids
from serving.gateway.models import ApiKey, UsageEvent
from serving.models import Endpoint
from tests.training import test_eval_runs as eval_runs
from training.choices import JobStatus
from training.evals import gateway, runs
from training.evals.leaderboard import leaderboard

pytestmark = pytest.mark.django_db
# test_eval_runs.py's fixtures: a classification task of 24 rows, a plain endpoint, the stand-in gateway.
version, task, endpoint, answers = eval_runs.version, eval_runs.task, eval_runs.endpoint, eval_runs.answers


@pytest.fixture
def cascade(team, answers, monkeypatch):
    """``cascade(costs)``: a cascade over ``small-ep`` and ``large-ep`` whose run's key has, for each of its
    rows, one event per hop ({hop name: cost}, as the gateway wrote them at each hop's price), via it."""
    small = Endpoint.objects.create(name="small-ep", owner_team=team)
    large = Endpoint.objects.create(name="large-ep", owner_team=team)
    made = Endpoint.objects.create(
        name="cascade-ep",
        owner_team=team,
        kind="cascade",
        config={"small": "small-ep", "large": "large-ep", "threshold": -1.0},
    )
    key = ApiKey.objects.create(team=team, name="eval key", key_id="k" * 12, secret_hash="-", service=True)

    @contextlib.contextmanager
    def client_for(team, endpoint_name, label):
        yield SimpleNamespace(key_id=key.pk)

    monkeypatch.setattr(gateway, "client_for", client_for)

    def make(costs: dict[str, str], rows: int) -> Endpoint:
        for row in range(rows):
            for hop, (hop_endpoint, cost) in enumerate(
                ((small, costs["small-ep"]), (large, costs["large-ep"])), start=1
            ):
                UsageEvent.objects.create(
                    event_id=hop_ids.of_hop(f"req{row}", hop),
                    at=timezone.now(),
                    api_key=key,
                    team_id=team.pk,
                    endpoint=hop_endpoint.name,
                    endpoint_id=hop_endpoint.pk,
                    via=made.name,
                    kind="chat",
                    status=200,
                    input_tokens=10,
                    output_tokens=2,
                    cost=Decimal(cost),
                )
        return made

    make.small, make.large = small, large  # type: ignore[attr-defined]
    return make


def scored(engineer, task, endpoint, rows: int) -> dict:
    run = eval_runs.start(engineer, task, endpoint, row_limit=rows)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    return run.metrics


def test_a_composite_over_unpriced_hops_is_not_priced_and_on_no_front(engineer, task, endpoint, cascade):
    composite = cascade({"small-ep": "0", "large-ep": "0"}, rows=4)
    scores = scored(engineer, task, composite, rows=4)
    assert scores["cost_per_1k_requests"] is None and scores["price"] is None
    eval_runs.priced(endpoint, "1.00", "3.00")
    scored(engineer, task, endpoint, rows=4)  # as good, and priced
    board = {e.endpoint: e for e in leaderboard(task.eval_sets.get())}
    assert board["cascade-ep"].cells["cost"] == "not priced"
    assert not board["cascade-ep"].on_front and board["router-ep"].on_front


def test_a_composite_with_one_unpriced_hop_is_not_priced(engineer, task, cascade):
    eval_runs.priced(cascade.small, "1.00", "2.00")
    composite = cascade({"small-ep": "0.000014", "large-ep": "0"}, rows=4)
    assert scored(engineer, task, composite, rows=4)["cost_per_1k_requests"] is None


def test_a_priced_composite_costs_every_hop_at_its_price(engineer, task, cascade):
    eval_runs.priced(cascade.small, "1.00", "2.00")
    eval_runs.priced(cascade.large, "10.00", "20.00")
    composite = cascade({"small-ep": "0.000014", "large-ep": "0.000140"}, rows=4)
    scores = scored(engineer, task, composite, rows=4)
    assert scores["billed"] == "0.000616"  # 4 x (0.000014 + 0.000140)
    assert scores["cost_per_1k_requests"] == pytest.approx(0.154) and scores["price"] is None


def test_a_price_version_with_no_rate_is_not_priced(engineer, task, endpoint, answers):
    """Billing charges the calls of a version with no rate at all at cost (a share of compute), not at 0."""
    eval_runs.priced(endpoint, "0", "0")
    scores = scored(engineer, task, endpoint, rows=4)
    assert scores["cost_per_1k_requests"] is None and scores["price"] is None
    assert leaderboard(task.eval_sets.get())[0].cells["cost"] == "not priced"

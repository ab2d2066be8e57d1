"""The portfolio: one row per task with its production endpoint's figures on the task's eval set, its traffic
from the hourly rollups, the hint at a cheaper, smaller or better candidate, and the canary that one action
starts from it (through serving's rollout service); the page and the REST API with owner / member /
outsider, and the page's query count pinned. The eval runs are written as rows here: scoring through the
gateway is tests/training/test_eval_runs*.py's."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving.choices import RolloutState
from serving.gateway import usage
from serving.gateway.models import UsageEvent, UsageHourly
from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute, EndpointShare, Rollout
from tests.conftest import actor_for
from tests.training.conftest import jsonl, upload
from training.choices import JobStatus
from training.evals import canary_judging, catalogue, portfolio
from training.evals.models import EndpointEvalRun, Task
from training.evals.portfolio import Figures, pick_candidate

MARGIN = 0.02


# --- The hint, as a pure decision -------------------------------------------------------------------
def fig(name: str, quality, cost=None, parameters=None) -> Figures:
    return Figures(endpoint=name, quality=quality, cost_per_1k=cost, parameters=parameters)


PRODUCTION = fig("general", 0.90, cost=0.05, parameters=270_000_000)


def test_a_cheaper_candidate_within_the_margin_is_hinted():
    assert pick_candidate(PRODUCTION, [fig("tuned", 0.89, cost=0.02)], MARGIN).endpoint == "tuned"


def test_a_cheaper_candidate_below_the_margin_is_not():
    assert pick_candidate(PRODUCTION, [fig("tuned", 0.87, cost=0.02)], MARGIN) is None


def test_a_smaller_candidate_at_the_same_cost_within_the_margin_is_hinted():
    smaller = fig("small", 0.895, cost=0.05, parameters=135_000_000)
    assert pick_candidate(PRODUCTION, [smaller], MARGIN) == smaller


def test_a_candidate_neither_cheaper_nor_smaller_nor_better_is_not_hinted():
    assert pick_candidate(PRODUCTION, [fig("same", 0.91, cost=0.05, parameters=270_000_000)], MARGIN) is None


def test_a_better_candidate_at_no_more_cost_or_size_is_hinted():
    better = fig("tuned", 0.97, cost=0.05, parameters=270_000_000)
    assert pick_candidate(PRODUCTION, [better], MARGIN) == better


def test_a_better_candidate_that_costs_more_is_not_hinted():
    assert pick_candidate(PRODUCTION, [fig("big", 0.99, cost=0.50)], MARGIN) is None


def test_an_unpriced_candidate_of_a_priced_endpoint_is_hinted_only_when_smaller():
    assert pick_candidate(PRODUCTION, [fig("unpriced", 0.99)], MARGIN) is None
    small = fig("unpriced-small", 0.99, parameters=135_000_000)
    assert pick_candidate(PRODUCTION, [small], MARGIN) == small


def test_the_cheapest_fitting_candidate_is_hinted_first():
    chosen = pick_candidate(
        PRODUCTION, [fig("a", 0.95, cost=0.04), fig("b", 0.89, cost=0.01), fig("c", 0.5, cost=0.001)], MARGIN
    )
    assert chosen.endpoint == "b"


def test_no_hint_without_production_quality_or_for_production_itself():
    assert pick_candidate(fig("general", None, cost=0.05), [fig("t", 0.9, cost=0.01)], MARGIN) is None
    assert pick_candidate(PRODUCTION, [fig("general", 0.99, cost=0.01)], MARGIN) is None


def test_the_hint_reads_as_candidate_versus_production():
    hint = portfolio.Hint(
        candidate=fig("tuned-135m", 0.94, cost=0.02, parameters=134_515_008),
        production=fig("general-270m", 0.44, cost=0.05, parameters=268_098_176),
    )
    assert hint.text == "tuned-135m (134.5M): 0.94 at 0.02/1k vs general-270m (268.1M): 0.44 at 0.05/1k"


# --- A portfolio of one team ------------------------------------------------------------------------
def version_of(base: ModelVersion, number: int, parameters: int, kind=VersionKind.BASE) -> ModelVersion:
    return ModelVersion.objects.create(
        model=base.model,
        number=number,
        kind=kind,
        base_version=base if kind == VersionKind.ADAPTER else None,
        source=Source.FINE_TUNE if kind == VersionKind.ADAPTER else Source.HUB,
        status=VersionStatus.READY,
        parameter_count=parameters,
    )


@pytest.fixture
def world(team, base, cpu_pool, engineer, labels_set):
    """Two deployments of the team: big (270M) behind ``general``, the task's production endpoint, and
    small (135M) with a tuned adapter behind ``tuned``; both scored on the task's eval set."""
    base.parameter_count = 268_098_176
    base.save(update_fields=["parameter_count"])
    small_base = version_of(base, 2, 134_515_008)
    tuned_version = version_of(small_base, 3, 900_000, kind=VersionKind.ADAPTER)
    big = Deployment.objects.create(name="big-dep", owner_team=team, version=base, pool=cpu_pool)
    small = Deployment.objects.create(name="small-dep", owner_team=team, version=small_base, pool=cpu_pool)
    adapter = DeploymentAdapter.objects.create(deployment=small, version=tuned_version, name="tuned-lora")
    general = Endpoint.objects.create(name="general", owner_team=team)
    EndpointRoute.objects.create(endpoint=general, deployment=big, weight=100)
    tuned = Endpoint.objects.create(name="tuned", owner_team=team)
    EndpointRoute.objects.create(endpoint=tuned, deployment=small, adapter=adapter, weight=100)
    rows = [{"text": f"Ticket {i}", "label": ["billing", "technical"][i % 2]} for i in range(12)]
    version, _ = upload(engineer, labels_set, jsonl(*rows), eval_fraction=0.5)
    task = catalogue.create_task(
        actor=engineer, owner_team=team, name="Ticket routing", kind="classification"
    )
    eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")
    portfolio.set_production_endpoint(actor=engineer, task=task, endpoint=general)
    finished(eval_set, general, quality=0.44, cost=0.05, p50=410.0)
    finished(eval_set, tuned, quality=0.94, cost=0.02, p50=120.0)
    return {"task": task, "eval_set": eval_set, "general": general, "tuned": tuned}


def finished(eval_set, endpoint, *, quality, cost, p50, ago=timedelta(hours=1)) -> EndpointEvalRun:
    return EndpointEvalRun.objects.create(
        owner_team=eval_set.task.owner_team,
        eval_set=eval_set,
        endpoint=endpoint,
        endpoint_name=endpoint.name,
        status=JobStatus.SUCCEEDED,
        row_limit=12,
        rows_done=12,
        rows_total=12,
        metrics={"quality": quality, "cost_per_1k_requests": cost, "latency_p50_ms": p50},
        created_at=timezone.now() - ago,
        finished_at=timezone.now() - ago,
    )


def traffic(endpoint: str, requests: int, hours_ago: int) -> None:
    hour = (timezone.now() - timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)
    UsageHourly.objects.create(hour=hour, endpoint=endpoint, requests=requests)


def rows() -> list[portfolio.Row]:
    return portfolio.build_rows(list(Task.objects.select_related("owner_team", "production_endpoint")))


@pytest.mark.django_db
def test_a_row_shows_production_figures_traffic_and_the_hint(world, org):
    traffic("general", 500, hours_ago=2)
    traffic("general", 200, hours_ago=50)
    traffic("general", 9999, hours_ago=24 * 8)  # older than the 7 days
    traffic("tuned", 7000, hours_ago=2)  # not production: not this row's traffic
    (row,) = portfolio.build_rows(list(portfolio.visible_tasks(actor_for(org["owner"]))))
    assert row.endpoint.name == "general"
    assert row.version == "smol-base:v1"
    assert (row.production.quality, row.production.cost_per_1k, row.production.latency_p50_ms) == (
        0.44,
        0.05,
        410.0,
    )
    assert row.requests_per_day == pytest.approx(100.0)
    assert row.hint.text == "tuned (134.5M): 0.94 at 0.02/1k vs general (268.1M): 0.44 at 0.05/1k"
    assert row.hint.blocked == ""
    assert row.hint.candidate.target == ("small-dep", "tuned-lora")


@pytest.mark.django_db(transaction=True)
def test_a_composite_in_production_counts_its_calls_not_zero_and_its_hops_count_theirs(world, engineer):
    """A cascade is billed only through its hops (each event names the hop, ``via`` the cascade): its
    traffic is its first hop's calls via it, read from the hourly rollups the flusher's rollup writes."""
    cascade = Endpoint.objects.create(
        name="smart",
        owner_team=world["task"].owner_team,
        kind="cascade",
        config={"small": "tuned", "large": "general", "threshold": -1.0},
    )
    at = timezone.now() - timedelta(minutes=1)
    calls = [("a-1", "tuned", "smart"), ("a-2", "general", "smart"), ("b-1", "tuned", "smart")]
    calls += [("c", "tuned", ""), ("d", "general", ""), ("e", "general", "")]
    UsageEvent.objects.bulk_create(
        UsageEvent(event_id=e, at=at, endpoint=name, via=via, kind="chat", status=200, latency_ms=5)
        for e, name, via in calls
    )
    usage.rollup()
    portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=cascade)
    (row,) = rows()
    assert row.requests_per_day == pytest.approx(2 / 7), "two calls of the cascade"
    portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=world["general"])
    (row,) = rows()
    assert row.requests_per_day == pytest.approx(3 / 7), "general's own calls and the one escalated to it"


@pytest.mark.django_db
def test_the_latest_finished_run_of_each_endpoint_counts(world):
    finished(
        world["eval_set"], world["general"], quality=0.99, cost=0.05, p50=400.0, ago=timedelta(minutes=5)
    )
    EndpointEvalRun.objects.create(  # a newer run that failed does not count
        owner_team=world["task"].owner_team,
        eval_set=world["eval_set"],
        endpoint=world["general"],
        endpoint_name="general",
        status=JobStatus.FAILED,
        row_limit=12,
        metrics={"quality": 0.0},
    )
    (row,) = rows()
    assert row.production.quality == 0.99
    assert row.hint is None  # tuned no longer scores within the margin


@pytest.mark.django_db
def test_a_task_without_production_endpoint_has_no_hint(world):
    Task.objects.filter(pk=world["task"].pk).update(production_endpoint=None)
    (row,) = rows()
    assert (row.endpoint, row.production, row.hint) == (None, None, None)
    assert {c.endpoint for c in row.candidates} == {"general", "tuned"}


@pytest.mark.django_db
def test_a_candidate_already_routed_is_hinted_but_blocked(world):
    EndpointRoute.objects.create(
        endpoint=world["general"],
        deployment=Deployment.objects.get(name="small-dep"),
        adapter=DeploymentAdapter.objects.get(name="tuned-lora"),
        weight=10,
    )
    (row,) = rows()
    assert row.hint.blocked == "general already routes to small-dep/tuned-lora."


# --- Setting the production endpoint ----------------------------------------------------------------
@pytest.mark.django_db
def test_setting_the_production_endpoint_is_audited(world, engineer):
    portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=world["tuned"])
    event = AuditEvent.objects.filter(action="task.set_production").latest("sequence")
    assert (event.before["production_endpoint"], event.after["production_endpoint"]) == ("general", "tuned")


@pytest.mark.django_db
def test_only_an_endpoint_the_team_may_call_can_serve_its_task(world, engineer, other_team, base, cpu_pool):
    foreign = Endpoint.objects.create(name="foreign", owner_team=other_team)
    with pytest.raises(NotFound):
        portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=foreign)


@pytest.mark.django_db
def test_a_team_naming_a_shared_endpoint_its_production_lends_its_eval_rows_to_no_rollout_of_the_owner(
    world, engineer, other_team
):
    """A task may be served by an endpoint another team shares with its team; the owner's judged rollouts on
    that endpoint must not sample the task's eval rows (questions and reference answers) for the owner's
    canary and judge."""
    foreign = Endpoint.objects.create(name="foreign", owner_team=other_team)
    EndpointShare.objects.create(endpoint=foreign, team=world["task"].owner_team)
    portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=foreign)

    assert canary_judging.eval_set_of(foreign) is None
    assert "no task of foreign's team" in canary_judging.check(foreign)
    assert canary_judging.eval_set_of(world["general"]) is None, "no longer its task's production endpoint"
    portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=world["general"])
    assert canary_judging.eval_set_of(world["general"]) == world["eval_set"]


@pytest.mark.django_db
def test_a_task_served_by_another_teams_shared_endpoint_shows_only_its_own_teams_calls(
    world, engineer, other_team, org
):
    """The endpoint's owner sees every caller's traffic; a task of another team served by it, only its own
    team's calls (the other callers' volumes are theirs). Nor does the page load the runs' kept answers."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    team = world["task"].owner_team
    foreign = Endpoint.objects.create(name="foreign", owner_team=other_team)
    EndpointShare.objects.create(endpoint=foreign, team=team)
    at = timezone.now() - timedelta(minutes=1)
    from serving.gateway import services as key_services

    admin = actor_for(org["admin"])
    keys = {t.pk: key_services.create_key(actor=admin, team=t, name="k")[0] for t in (team, other_team)}
    calls = [("m-1", team.pk), ("o-1", other_team.pk), ("o-2", other_team.pk), ("o-3", other_team.pk)]
    UsageEvent.objects.bulk_create(
        UsageEvent(
            event_id=e,
            at=at,
            endpoint="foreign",
            team_id=t,
            api_key=keys[t],
            kind="chat",
            status=200,
            latency_ms=5,
        )  # fmt: skip
        for e, t in calls
    )
    usage.rollup()
    portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=foreign)
    with CaptureQueriesContext(connection) as queries:
        (row,) = rows()
    assert row.requests_per_day == pytest.approx(1 / 7), "its team's one call, not the owner's three"
    assert not any('"answers"' in query["sql"] for query in queries.captured_queries)


@pytest.mark.django_db
def test_a_viewer_cannot_name_the_production_endpoint(world, org):
    with pytest.raises(Forbidden):
        portfolio.set_production_endpoint(actor=actor_for(org["viewer"]), task=world["task"], endpoint=None)


# --- The canary -------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_canary_routes_a_share_of_production_to_the_candidate_audited(world, engineer):
    rollout = portfolio.start_canary(actor=engineer, task=world["task"], candidate="tuned")
    assert (rollout.endpoint.name, rollout.deployment, rollout.adapter) == (
        "general",
        "small-dep",
        "tuned-lora",
    )
    assert rollout.state == RolloutState.CANARY
    weights = {
        (r.deployment.name, r.adapter.name if r.adapter else ""): r.weight
        for r in world["general"].routes.all()
    }
    assert weights == {("big-dep", ""): 9500, ("small-dep", "tuned-lora"): 500}
    assert AuditEvent.objects.filter(action="rollout.start").count() == 1


@pytest.mark.django_db
def test_a_second_canary_while_one_runs_is_a_conflict(world, engineer):
    portfolio.start_canary(actor=engineer, task=world["task"], candidate="tuned")
    with pytest.raises(Conflict):
        portfolio.start_canary(actor=engineer, task=world["task"], candidate="tuned")


@pytest.mark.django_db
def test_a_canary_of_an_endpoint_not_evaluated_on_the_task_is_refused(world, engineer):
    with pytest.raises(Invalid):
        portfolio.start_canary(actor=engineer, task=world["task"], candidate="nowhere")
    assert not Rollout.objects.exists()


@pytest.mark.django_db
def test_a_developer_may_see_the_hint_but_not_start_the_canary(world, org):
    with pytest.raises(Forbidden):
        portfolio.start_canary(actor=actor_for(org["developer"]), task=world["task"], candidate="tuned")


@pytest.mark.django_db
def test_an_outsider_cannot_find_the_task(world, org):
    with pytest.raises(NotFound):
        portfolio.start_canary(actor=actor_for(org["outsider"]), task=world["task"], candidate="tuned")


# --- The page -----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_page_shows_the_row_and_the_hint_with_its_button(client, org, world):
    client.force_login(org["owner"])
    html = client.get(reverse("portfolio")).content.decode()
    assert "Ticket routing" in html and "general" in html and "smol-base:v1" in html
    assert "tuned (134.5M): 0.94 at 0.02/1k vs general (268.1M): 0.44 at 0.05/1k" in html
    assert "Start canary" in html


@pytest.mark.django_db
def test_a_viewer_sees_the_hint_without_the_button(client, org, world):
    client.force_login(org["viewer"])
    html = client.get(reverse("portfolio")).content.decode()
    assert "0.94 at 0.02/1k" in html
    assert "Start canary" not in html


@pytest.mark.django_db
def test_an_outsider_sees_no_row_of_the_team(client, org, world):
    client.force_login(org["outsider"])
    html = client.get(reverse("portfolio")).content.decode()
    assert "Ticket routing" not in html and "0 tasks" in html
    assert (
        client.post(reverse("portfolio-canary", args=[world["task"].pk]), {"candidate": "tuned"}).status_code
        == 404
    )


@pytest.mark.django_db
def test_pressing_start_canary_goes_to_the_endpoint_page_showing_the_rollout(client, org, world):
    client.force_login(org["engineer"])
    response = client.post(
        reverse("portfolio-canary", args=[world["task"].pk]), {"candidate": "tuned"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("endpoint-detail", args=["general"])
    assert "small-dep/tuned-lora" in response.content.decode()


@pytest.mark.django_db
def test_the_production_form_names_the_endpoint(client, org, world):
    client.force_login(org["engineer"])
    url = reverse("portfolio-production", args=[world["task"].pk])
    assert client.post(url, {"endpoint": world["tuned"].pk}).status_code == 302
    assert Task.objects.get(pk=world["task"].pk).production_endpoint == world["tuned"]


def page_queries(client) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(reverse("portfolio")).status_code == 200
    return len(captured)


@pytest.mark.django_db
def test_the_page_costs_the_same_queries_for_one_task_or_many(client, org, world, engineer, team):
    client.force_login(org["owner"])
    traffic("general", 70, hours_ago=3)
    one = page_queries(client)
    for n in range(4):
        task = catalogue.create_task(actor=engineer, owner_team=team, name=f"Task {n}", kind="classification")
        eval_set = catalogue.add_eval_set(
            actor=engineer, task=task, dataset_version=world["eval_set"].dataset_version, source="all"
        )
        portfolio.set_production_endpoint(actor=engineer, task=task, endpoint=world["general"])
        finished(eval_set, world["general"], quality=0.5, cost=0.05, p50=400.0)
        finished(eval_set, world["tuned"], quality=0.9, cost=0.02, p50=100.0)
    assert page_queries(client) == one
    # Session, user, the actor's roles; the page: count, tasks, eval sets, latest runs, endpoints, their
    # routes, their rollouts under way, the traffic; and what the layout around it reads.
    assert one == 12


# --- The REST API -------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_api_lists_rows_with_the_hint(client, org, world):
    client.force_login(org["viewer"])
    body = client.get("/api/v1/portfolio").json()
    assert body["count"] == 1
    (item,) = body["items"]
    assert item["production_endpoint"] == "general" and item["production_version"] == "smol-base:v1"
    assert item["production"]["quality"] == 0.44 and item["production"]["cost_per_1k_requests"] == 0.05
    assert item["hint"]["candidate"]["endpoint"] == "tuned" and item["hint"]["can_start_canary"] is True


@pytest.mark.django_db
def test_the_api_hides_other_teams_tasks(client, org, world):
    client.force_login(org["outsider"])
    assert client.get("/api/v1/portfolio").json()["count"] == 0
    url = f"/api/v1/portfolio/{world['task'].pk}/production"
    assert client.put(url, {"endpoint_id": None}, content_type="application/json").status_code == 404


@pytest.mark.django_db
def test_the_api_starts_a_canary_and_refuses_a_second(client, org, world):
    client.force_login(org["owner"])
    url = f"/api/v1/portfolio/{world['task'].pk}/canary"
    first = client.post(url, {"candidate": "tuned", "canary_percent": 10}, content_type="application/json")
    assert first.status_code == 201 and first.json()["canary_percent"] == 10
    second = client.post(url, {"candidate": "tuned"}, content_type="application/json")
    assert second.status_code == 409
    assert client.post(url, {"candidate": "x" * 64}, content_type="application/json").status_code == 422

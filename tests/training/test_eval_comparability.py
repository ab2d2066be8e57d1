"""Eval runs are compared only where they measured the same thing: a canary is started only of what a run
measured (an endpoint repointed since is evaluated again first); a hint and a front rank only runs over as
many rows and with the same max_tokens as production's; a classification answer is scored against the
eval set's whole label set, however few rows a run took; and the portfolio shows another team's private
model neither by name nor by size."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Model, ModelVersion
from serving.models import Deployment, Endpoint, EndpointRoute, EndpointShare, Rollout
from tests.conftest import actor_for
from tests.training.test_eval_runs import QUEUES, labelled
from tests.training.test_eval_runs import answers as answers  # noqa: F401 - the shared fixtures
from tests.training.test_eval_runs import endpoint as endpoint  # noqa: F401
from tests.training.test_eval_runs import task as task  # noqa: F401
from tests.training.test_eval_runs import version as version  # noqa: F401
from tests.training.test_portfolio import finished
from tests.training.test_portfolio import world as world  # noqa: F401
from training.choices import JobStatus
from training.evals import comparability, gateway, portfolio, runs, side_by_side
from training.evals.leaderboard import leaderboard
from training.evals.models import EndpointEvalRun

pytestmark = pytest.mark.django_db


def the_row(org, role="owner") -> portfolio.Row:
    (row,) = portfolio.build_rows(list(portfolio.visible_tasks(actor_for(org[role]))))
    return row


# --- A canary of what was measured only -------------------------------------------------------------
def test_a_candidate_repointed_after_its_run_is_not_hinted_and_its_canary_is_refused(
    world, org, engineer, answers
):
    tuned = world["tuned"]
    run = runs.start_run(
        actor=engineer, task=world["task"], eval_set=world["eval_set"], endpoint=tuned, enqueue=False
    )
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    measured = run.measured_routes or []
    assert [(r["deployment"], r["adapter"], r["weight"]) for r in measured] == [
        ("small-dep", "tuned-lora", 100)
    ]
    hint = the_row(org).hint
    assert hint is not None and hint.candidate.endpoint == "tuned"

    # The candidate now sends its calls to a deployment no run has measured.
    small = Deployment.objects.get(name="small-dep")
    untested = Deployment.objects.create(
        name="untested-dep", owner_team=small.owner_team, version=small.version, pool=small.pool
    )
    EndpointRoute.objects.filter(endpoint=tuned).update(deployment=untested, adapter=None)
    before = AuditEvent.objects.count()
    with pytest.raises(Conflict, match="evaluate it again"):
        portfolio.start_canary(actor=engineer, task=world["task"], candidate="tuned")
    assert not Rollout.objects.exists()
    assert AuditEvent.objects.count() == before
    assert [(r.deployment.name, r.weight) for r in world["general"].routes.all()] == [("big-dep", 100)]
    assert the_row(org).hint is None


def test_production_repointed_after_its_run_is_compared_with_nothing_and_says_so(client, world, org):
    """Production's figures measured what it served then: a hint against them compares the candidate with
    something no longer served."""
    general = world["general"]
    measured = comparability.measured_now(general.pk)
    EndpointEvalRun.objects.filter(endpoint=general).update(measured_routes=measured)
    assert the_row(org).hint is not None
    small = Deployment.objects.get(name="small-dep")
    EndpointRoute.objects.filter(endpoint=general).update(deployment=small)

    row = the_row(org)
    assert row.production is not None and row.production.repointed and row.hint is None
    client.force_login(org["viewer"])
    page = client.get(reverse("portfolio")).content.decode()
    assert 'data-testid="portfolio-repointed"' in page and 'data-testid="portfolio-hint"' not in page
    (item,) = client.get("/api/v1/portfolio").json()["items"]
    assert item["production"]["repointed"] is True and item["hint"] is None
    board = {e.endpoint: e for e in leaderboard(world["eval_set"])}
    assert not board["general"].comparable and not board["general"].on_front
    assert "evaluate it again" in board["general"].incomparable
    assert board["tuned"].on_front


def test_a_composite_candidate_reconfigured_after_its_run_is_not_hinted(world, org):
    """A cascade has no routes of its own: what its run measured is its configuration."""
    smart = Endpoint.objects.create(
        name="smart",
        owner_team=world["task"].owner_team,
        kind="cascade",
        config={"small": "tuned", "large": "general", "threshold": -1.0},
    )
    run = finished(world["eval_set"], smart, quality=0.99, cost=0.01, p50=90.0, ago=timedelta(minutes=1))
    EndpointEvalRun.objects.filter(pk=run.pk).update(measured_routes=comparability.measured_now(smart.pk))
    run.refresh_from_db()
    assert not comparability.repointed(run, smart, [])
    hint = the_row(org).hint
    assert hint is not None and hint.candidate.endpoint == "smart"

    Endpoint.objects.filter(pk=smart.pk).update(
        config={"small": "tuned", "large": "general", "threshold": -9.0}
    )
    smart.refresh_from_db()
    assert comparability.repointed(run, smart, [])
    assert the_row(org).hint.candidate.endpoint == "tuned"
    board = {e.endpoint: e for e in leaderboard(world["eval_set"])}
    assert not board["smart"].comparable and not board["smart"].on_front

    # A composite's run recorded before configurations were ([]) measures what it serves now.
    EndpointEvalRun.objects.filter(pk=run.pk).update(measured_routes=[])
    run.refresh_from_db()
    assert not comparability.repointed(run, smart, [])


# --- Runs under other settings are not ranked -------------------------------------------------------
def test_a_one_row_run_is_neither_hinted_nor_on_the_front_but_listed_as_not_comparable(client, world, org):
    short = finished(
        world["eval_set"], world["tuned"], quality=1.0, cost=0.01, p50=90.0, ago=timedelta(minutes=1)
    )
    EndpointEvalRun.objects.filter(pk=short.pk).update(row_limit=1, rows_done=1, rows_total=1)
    row = the_row(org)
    assert row.production is not None and row.production.quality == 0.44 and row.hint is None
    assert row.incomparable == {"tuned": "scored 1 row, fewer than the 12 of general's run"}

    board = leaderboard(world["eval_set"])
    assert [(e.endpoint, e.rows, e.on_front, e.comparable) for e in board] == [
        ("general", 12, True, True),
        ("tuned", 1, False, False),
    ]
    client.force_login(org["viewer"])
    page = client.get(reverse("task-detail", args=[world["task"].pk])).content.decode()
    assert "not comparable: scored 1 row, fewer than the 12 of general&#x27;s run" in page
    body = client.get(f"/api/v1/tasks/{world['task'].pk}").json()
    entries = {e["endpoint"]: e for e in body["eval_sets"][0]["leaderboard"]}
    assert (entries["tuned"]["rows"], entries["tuned"]["comparable"], entries["tuned"]["on_front"]) == (
        1,
        False,
        False,
    )
    assert (
        client.get(reverse("portfolio")).content.decode().count('data-testid="portfolio-incomparable"') == 1
    )


def test_a_run_with_another_max_tokens_is_not_compared(world, org):
    other = finished(
        world["eval_set"], world["tuned"], quality=0.99, cost=0.01, p50=90.0, ago=timedelta(minutes=1)
    )
    EndpointEvalRun.objects.filter(pk=other.pk).update(max_tokens=512)
    row = the_row(org)
    assert row.hint is None
    assert row.incomparable == {"tuned": "answered with max_tokens 512, not 64"}


def test_a_run_that_scored_the_sets_first_rows_is_not_compared_with_one_that_sampled_it(world, org):
    """Runs made before runs sampled the whole set scored its first rows: on a set written label by label,
    other labels than a later run's of as many rows."""
    older = finished(
        world["eval_set"], world["tuned"], quality=0.99, cost=0.01, p50=90.0, ago=timedelta(minutes=1)
    )
    EndpointEvalRun.objects.update(row_limit=6, rows_done=6, rows_total=6)  # half of the set's 12 rows each
    EndpointEvalRun.objects.filter(pk=older.pk).update(scored_first_rows=True)
    row = the_row(org)
    assert row.hint is None
    assert "tuned's run scored the set's first rows" in row.incomparable["tuned"]
    # The leaderboard's reference is the newest run of the most rows, tuned's: general's is the one set apart.
    assert {e.endpoint: e.comparable for e in leaderboard(world["eval_set"])} == {
        "tuned": True,
        "general": False,
    }


# --- The eval set's labels, whatever the rows a run took --------------------------------------------
def test_a_short_run_marks_an_answer_as_a_longer_run_of_the_same_eval_set_does(
    engineer, task, endpoint, answers, monkeypatch
):
    eval_set = task.eval_sets.get()
    ((position, row),) = runs.sampled_rows(eval_set, 1)  # the one row a run of one row scores
    first = row["label"]
    # The shortest longer run that also scores a row of another label (its rows include the short run's).
    k = next(n for n in range(2, 25) if {r["label"] for _, r in runs.sampled_rows(eval_set, n)} != {first})
    other = next(r["label"] for _, r in runs.sampled_rows(eval_set, k) if r["label"] != first)
    expected = {row["text"]: row["label"] for row in labelled(24)}

    def ask(client, endpoint_name, messages, max_tokens):
        # Names another label of the eval set first, then the row's own: it answers that other label.
        said = f"{other}, or maybe {expected[messages[-1]['content']]}"
        return gateway.Answer(text=said, latency_s=0.05, input_tokens=10, output_tokens=2)

    monkeypatch.setattr(gateway, "ask", ask)
    done = []
    for limit in (1, k):
        run = runs.start_run(
            actor=engineer, task=task, eval_set=eval_set, endpoint=endpoint, row_limit=limit, enqueue=False
        )
        runs.execute(run.pk)
        run.refresh_from_db()
        assert run.status == JobStatus.SUCCEEDED, run.status_detail
        done.append(run)
    assert done[0].metrics["accuracy"] == 0.0, "the answer names the other label, wrong for its row"
    compared = side_by_side.compare(actor=engineer, task=task, run_ids=[done[0].pk, done[1].pk])
    (row_1,) = [row for row in compared.rows if row.number == position + 1]
    assert not row_1.differs
    assert [cell.correct for cell in row_1.cells] == [False, False]
    assert set(QUEUES) >= {first, other}


# --- Another team's private model ---------------------------------------------------------------------
def test_a_task_served_by_another_teams_shared_endpoint_hides_its_private_model(
    client, world, org, engineer, other_team, cpu_pool
):
    private = Model.objects.create(name="contracts-secret", owner_team=other_team)
    secret = ModelVersion.objects.create(
        model=private,
        number=7,
        kind=VersionKind.BASE,
        source=Source.HUB,
        status=VersionStatus.READY,
        parameter_count=3_210_000_000,
    )
    deployment = Deployment.objects.create(
        name="secret-dep", owner_team=other_team, version=secret, pool=cpu_pool
    )
    foreign = Endpoint.objects.create(name="foreign", owner_team=other_team)
    EndpointRoute.objects.create(endpoint=foreign, deployment=deployment, weight=100)
    EndpointShare.objects.create(endpoint=foreign, team=world["task"].owner_team)
    portfolio.set_production_endpoint(actor=engineer, task=world["task"], endpoint=foreign)
    finished(world["eval_set"], foreign, quality=0.9, cost=0.05, p50=300.0, ago=timedelta(minutes=1))

    client.force_login(org["viewer"])
    (item,) = client.get("/api/v1/portfolio").json()["items"]
    assert item["production_endpoint"] == "foreign"
    assert item["production_version"] is None
    assert item["production"]["parameters"] is None and item["production"]["quality"] == 0.9
    html = client.get(reverse("portfolio")).content.decode()
    assert "contracts-secret" not in html and "3.2B" not in html

    # Who may see the model in the registry sees it here too.
    client.force_login(org["admin"])
    (item,) = client.get("/api/v1/portfolio").json()["items"]
    assert item["production_version"] == "contracts-secret:v7"
    assert item["production"]["parameters"] == 3_210_000_000

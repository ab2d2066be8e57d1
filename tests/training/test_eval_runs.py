"""Eval runs of endpoints, with the gateway call (``training.evals.gateway.ask``) stood in for: the
scores of a run, progress, cancelling, failures and the reaper (no run is left running), the leaderboard's
front, and the task pages and REST API with their permission checks. The same run against the real
gateway process is tests/training/test_eval_runs_gateway.py."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.errors import Conflict, Invalid
from serving.models import Deployment, Endpoint, EndpointRoute
from tests.conftest import actor_for
from tests.training.conftest import jsonl, upload
from training import tasks
from training.choices import DatasetKind, JobStatus
from training.evals import catalogue, gateway, runs
from training.evals.leaderboard import leaderboard
from training.evals.models import EndpointEvalRun, EvalSet, Task
from training.models import Dataset

pytestmark = pytest.mark.django_db
QUEUES = ["billing", "technical", "account", "shipping"]


def labelled(n: int) -> list[dict]:
    return [{"text": f"Ticket {i}: about {QUEUES[i % 4]}", "label": QUEUES[i % 4]} for i in range(n)]


@pytest.fixture
def version(engineer, labels_set):
    made, _ = upload(engineer, labels_set, jsonl(*labelled(24)), eval_fraction=0.5)
    return made


@pytest.fixture
def endpoint(team, base, cpu_pool) -> Endpoint:
    deployment = Deployment.objects.create(name="router-dep", owner_team=team, version=base, pool=cpu_pool)
    made = Endpoint.objects.create(name="router-ep", owner_team=team)
    EndpointRoute.objects.create(endpoint=made, deployment=deployment, weight=100)
    return made


def priced(endpoint: Endpoint, input_rate: str, output_rate: str) -> None:
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(endpoint.pk),
        subject_name=endpoint.name,
        effective_from=timezone.now() - timedelta(days=1),
        input_per_million=Decimal(input_rate),
        output_per_million=Decimal(output_rate),
    )


@pytest.fixture
def task(engineer, team, version):
    made = catalogue.create_task(
        actor=engineer, owner_team=team, name="Ticket routing", kind="classification"
    )
    catalogue.add_eval_set(actor=engineer, task=made, dataset_version=version, source="all")
    return made


@pytest.fixture
def answers(monkeypatch) -> list[list[dict]]:
    """The stand-in gateway: answers "billing" to every row (10 input, 2 output tokens, 50 ms); records the
    messages it was sent."""
    asked: list[list[dict]] = []

    @contextlib.contextmanager
    def client_for(team, endpoint_name, label):
        yield None

    def ask(client, endpoint_name, messages, max_tokens):
        asked.append(messages)
        return gateway.Answer(text="Billing.", latency_s=0.05, input_tokens=10, output_tokens=2)

    monkeypatch.setattr(gateway, "client_for", client_for)
    monkeypatch.setattr(gateway, "ask", ask)
    return asked


def start(engineer, task, endpoint, **options) -> EndpointEvalRun:
    return runs.start_run(
        actor=engineer, task=task, eval_set=task.eval_sets.get(), endpoint=endpoint, enqueue=False, **options
    )


def test_a_run_scores_the_endpoint_on_the_eval_set_and_prices_it(engineer, task, endpoint, answers):
    priced(endpoint, "1.00", "3.00")
    run = start(engineer, task, endpoint, row_limit=30, concurrency=3)
    assert run.status == JobStatus.QUEUED and run.rows_total == 24  # the eval set's rows: all 24
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    assert (run.rows_done, run.rows_total, len(answers)) == (24, 24, 24)
    sent = {messages[0]["content"] for messages in answers}
    assert sent == {row["text"] for row in labelled(24)} and all(len(m) == 1 for m in answers)
    scores = run.metrics
    assert scores["accuracy"] == pytest.approx(6 / 24) == scores["quality"]  # a quarter are billing
    # billing: every row predicted billing, 6 right: precision 0.25, recall 1.
    assert scores["f1_by_label"]["billing"] == pytest.approx(2 * 0.25 / 1.25)
    assert scores["f1_by_label"]["technical"] == 0.0
    assert scores["confusion"] == {queue: {"billing": 6} for queue in QUEUES}
    assert scores["latency_p50_ms"] == pytest.approx(50) and scores["latency_p95_ms"] == pytest.approx(50)
    assert scores["tokens_per_second"] == pytest.approx(40)  # 2 tokens in 50 ms
    # (10 x 1.00 + 2 x 3.00) per million, per request, times 1,000.
    assert scores["cost_per_1k_requests"] == pytest.approx(0.016)
    assert Decimal(scores["price"]["input_per_million"]) == 1
    audit = list(AuditEvent.objects.filter(action__startswith="eval.").values_list("action", flat=True))
    assert sorted(audit) == ["eval.run_finish", "eval.run_start"]


def test_the_run_page_shows_where_each_labels_rows_went(client, org, engineer, task, endpoint, answers):
    run = start(engineer, task, endpoint, row_limit=30)  # all 24 rows, 6 a queue
    runs.execute(run.pk)
    client.force_login(org["engineer"])
    page = client.get(reverse("eval-run-detail", args=[run.pk])).content.decode()
    assert "Confusion: rows are the expected labels" in page
    # Every answer was billing: billing's 6 rows on the diagonal, the other queues' 6 each missed to billing.
    assert page.count('class="num confusion--hit">6<') == 1
    assert page.count('class="num confusion--miss">6<') == 3


def test_an_unpriced_endpoint_has_no_cost_and_a_second_delivery_changes_nothing(
    engineer, task, endpoint, answers
):
    run = start(engineer, task, endpoint, row_limit=4)
    runs.execute(run.pk)
    runs.execute(run.pk)  # redelivered: the run is no longer queued
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED and run.metrics["cost_per_1k_requests"] is None
    assert len(answers) == 4


def test_the_held_out_rows_are_the_default_eval_set(engineer, team, version, endpoint, answers):
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="generation")
    eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version)
    assert eval_set.row_count == version.eval_count
    run = runs.start_run(
        actor=engineer, task=task, eval_set=eval_set, endpoint=endpoint, row_limit=1000, enqueue=False
    )
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.rows_done == version.eval_count and "accuracy" not in run.metrics
    assert run.metrics["quality"] == run.metrics["contains"]


def test_a_gateway_refusal_fails_the_run_with_its_reason(engineer, task, endpoint, answers, monkeypatch):
    calls = []

    def refuse(client, endpoint_name, messages, max_tokens):
        calls.append(1)
        if len(calls) > 3:
            raise gateway.GatewayRefused("router-ep answered 429: rate limited")
        return gateway.Answer("billing", 0.01, 1, 1)

    monkeypatch.setattr(gateway, "ask", refuse)
    run = start(engineer, task, endpoint, row_limit=12, concurrency=1)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and run.finished_at is not None
    assert run.status_detail == "router-ep answered 429: rate limited"
    assert AuditEvent.objects.filter(action="eval.run_finish").count() == 1


def test_an_unexpected_error_fails_the_run_too(engineer, task, endpoint, answers, monkeypatch):
    def broken(client, endpoint_name, messages, max_tokens):
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway, "ask", broken)
    run = start(engineer, task, endpoint, row_limit=3)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and "RuntimeError: boom" in run.status_detail


def test_the_real_gateway_call_fails_the_run_when_the_gateway_is_down(engineer, task, endpoint, settings):
    settings.GATEWAY_INTERNAL_URL = "http://127.0.0.1:9"  # nothing listens there
    run = start(engineer, task, endpoint, row_limit=2)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and "The gateway did not answer" in run.status_detail
    from serving.gateway.models import ApiKey

    key = ApiKey.objects.get(name=f"eval run #{run.pk}")
    assert key.revoked_at is not None and key.team_id == task.owner_team_id  # the team's, revoked after


def test_cancelling_a_running_run_stops_it_before_its_next_rows(
    engineer, task, endpoint, answers, monkeypatch
):
    run = start(engineer, task, endpoint, row_limit=20, concurrency=2)
    checks = []

    def cancelled(run_id):
        checks.append(run_id)
        if len(checks) == 2:  # a person pressed cancel while the first batch ran
            EndpointEvalRun.objects.filter(pk=run_id).update(cancel_requested=True)
        return EndpointEvalRun.objects.filter(pk=run_id, cancel_requested=True).exists()

    monkeypatch.setattr(runs, "_cancelled", cancelled)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.CANCELLED and run.finished_at is not None
    assert run.rows_done == 4 == len(answers)  # one batch of 2 x concurrency
    assert run.status_detail == "Cancelled after 4 of 20 rows."


def test_a_cancel_asked_as_the_last_rows_came_back_is_not_overwritten_by_a_success(
    engineer, task, endpoint, answers, monkeypatch
):
    """Cancel is asked (and audited) after the run's last check and before its result is written: the run
    ends cancelled, as the person was told, not succeeded."""
    run = start(engineer, task, endpoint, row_limit=4)
    real = runs.summarise

    def summarise_while_cancelled(*args, **kwargs):
        runs.cancel_run(actor=engineer, run=EndpointEvalRun.objects.get(pk=run.pk))
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "summarise", summarise_while_cancelled)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.CANCELLED and run.status_detail == "Cancelled after 4 of 4 rows."


def test_cancel_ends_a_queued_run_at_once_and_marks_a_running_one(engineer, task, endpoint):
    queued = start(engineer, task, endpoint)
    assert runs.cancel_run(actor=engineer, run=queued).status == JobStatus.CANCELLED
    runs.execute(queued.pk)  # its delivery arrives later: nothing happens
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
    running = start(engineer, task, endpoint)
    EndpointEvalRun.objects.filter(pk=running.pk).update(status=JobStatus.RUNNING)
    marked = runs.cancel_run(actor=engineer, run=running)
    assert marked.status == JobStatus.RUNNING and marked.cancel_requested


def test_the_reaper_fails_a_run_whose_worker_died(engineer, task, endpoint, settings):
    run = start(engineer, task, endpoint)
    old = timezone.now() - timedelta(minutes=10)
    EndpointEvalRun.objects.filter(pk=run.pk).update(status=JobStatus.RUNNING, heartbeat_at=old)
    fresh = start(engineer, task, endpoint)
    EndpointEvalRun.objects.filter(pk=fresh.pk).update(status=JobStatus.RUNNING, heartbeat_at=timezone.now())
    assert runs.reap_stale(timedelta(minutes=2)) == [run.pk]
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and "stopped answering" in run.status_detail
    cancelling = start(engineer, task, endpoint)
    EndpointEvalRun.objects.filter(pk=cancelling.pk).update(
        status=JobStatus.RUNNING, heartbeat_at=old, cancel_requested=True
    )
    assert tasks.reap_stale_eval_runs() == 1  # beat runs it every minute
    assert settings.CELERY_BEAT_SCHEDULE["training-reap-eval-runs"]["task"] == "training.reap_stale_eval_runs"
    cancelling.refresh_from_db()
    assert cancelling.status == JobStatus.CANCELLED
    fresh.refresh_from_db()
    assert fresh.status == JobStatus.RUNNING


def finished(task, endpoint_name: str, quality: float, cost: float | None, when) -> EndpointEvalRun:
    return EndpointEvalRun.objects.create(
        owner_team=task.owner_team,
        eval_set=task.eval_sets.get(),
        endpoint_name=endpoint_name,
        row_limit=10,
        status=JobStatus.SUCCEEDED,
        metrics={"quality": quality, "cost_per_1k_requests": cost, "latency_p50_ms": 100.0},
        created_at=when,
    )


def test_the_leaderboard_takes_each_endpoints_latest_run_and_marks_the_front(task):
    now = timezone.now()
    finished(task, "big", 0.5, 1.0, now - timedelta(days=2))  # replaced by its later run
    finished(task, "big", 0.9, 2.0, now)
    finished(task, "small", 0.8, 1.0, now)
    finished(task, "worse", 0.7, 3.0, now)
    finished(task, "unpriced", 0.95, None, now)
    board = leaderboard(task.eval_sets.get())
    assert [(e.endpoint, e.quality, e.on_front) for e in board] == [
        ("unpriced", 0.95, False),
        ("big", 0.9, True),
        ("small", 0.8, True),
        ("worse", 0.7, False),
    ]


def test_the_task_page_shows_the_leaderboard_and_starts_a_run(client, org, task, endpoint):
    finished(task, "router-ep", 0.9, 2.0, timezone.now())
    client.force_login(org["engineer"])
    page = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert "Leaderboard" in page and "on the front" in page and "Score an endpoint" in page
    response = client.post(
        reverse("task-run-start", args=[task.pk]),
        {
            "endpoint": endpoint.pk,
            "eval_set": task.eval_sets.get().pk,
            "row_limit": 5,
            "concurrency": 2,
            "max_tokens": 8,
        },
    )
    run = EndpointEvalRun.objects.exclude(endpoint=None).get()
    assert response.status_code == 302 and response["Location"] == reverse("eval-run-detail", args=[run.pk])
    assert (run.row_limit, run.concurrency, run.max_tokens, run.owner_team_id) == (
        5,
        2,
        8,
        task.owner_team_id,
    )
    assert "Cancel the run" in client.get(reverse("eval-run-detail", args=[run.pk])).content.decode()
    client.force_login(org["viewer"])
    page = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert "Score an endpoint" not in page  # a viewer reads the leaderboard, starts nothing


def test_the_api_creates_a_task_with_an_eval_set_and_runs_and_cancels(client, org, team, version, endpoint):
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/tasks",
        {
            "owner_team_id": team.pk,
            "name": "Ticket routing",
            "kind": "classification",
            "eval_sets": [{"dataset_version_id": version.pk}],
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    task = response.json()
    assert task["slug"] == "ticket-routing" and task["eval_sets"][0]["source"] == "eval"
    assert task["eval_sets"][0]["leaderboard"] == []
    response = client.post(
        f"/api/v1/tasks/{task['id']}/eval-runs",
        {"endpoint_id": endpoint.pk, "eval_set_id": task["eval_sets"][0]["id"], "row_limit": 10},
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    run = response.json()
    assert (run["status"], run["endpoint"], run["task_id"]) == ("queued", "router-ep", task["id"])
    assert client.get(f"/api/v1/eval-runs/{run['id']}").json()["rows_total"] == 10
    response = client.post(f"/api/v1/eval-runs/{run['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    response = client.post(f"/api/v1/eval-runs/{run['id']}/cancel")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_the_api_answers_404_for_other_teams_objects_and_bounds_inputs(
    client, org, team, other_team, task, endpoint, version
):
    admin_actor = actor_for(org["admin"])
    foreign_endpoint = Endpoint.objects.create(name="their-ep", owner_team=other_team)
    foreign_set = Dataset.objects.create(
        name="theirs", owner_team=other_team, kind=DatasetKind.CLASSIFICATION
    )
    foreign_version, _ = upload(admin_actor, foreign_set, jsonl(*labelled(8)))
    client.force_login(org["engineer"])
    eval_set = task.eval_sets.get()
    url = f"/api/v1/tasks/{task.pk}/eval-runs"
    body = {"endpoint_id": foreign_endpoint.pk, "eval_set_id": eval_set.pk}
    assert client.post(url, body, content_type="application/json").status_code == 404
    body = {"endpoint_id": endpoint.pk, "eval_set_id": eval_set.pk, "row_limit": 10**9}
    response = client.post(url, body, content_type="application/json")
    assert response.status_code in (400, 422) and "error" in response.json()
    assert not EndpointEvalRun.objects.exists()
    theirs = catalogue.create_task(actor=admin_actor, owner_team=other_team, name="Theirs", kind="extraction")
    assert client.get(f"/api/v1/tasks/{theirs.pk}").status_code == 404
    body = {"endpoint_id": endpoint.pk, "eval_set_id": eval_set.pk}
    assert (
        client.post(f"/api/v1/tasks/{theirs.pk}/eval-runs", body, content_type="application/json").status_code
        == 404
    )
    response = client.post(
        "/api/v1/tasks",
        {"owner_team_id": other_team.pk, "name": "Mine", "kind": "generation"},
        content_type="application/json",
    )
    assert response.status_code == 404
    with pytest.raises(Invalid, match="task's team"):  # even an admin: the data is another team's
        catalogue.add_eval_set(actor=admin_actor, task=task, dataset_version=foreign_version)
    client.force_login(org["developer"])
    body = {"endpoint_id": endpoint.pk, "eval_set_id": eval_set.pk}
    assert client.post(url, body, content_type="application/json").status_code == 403
    assert [t["id"] for t in client.get("/api/v1/tasks").json()["items"]] == [task.pk]


def test_a_task_whose_eval_set_is_refused_is_not_created_half_and_can_be_sent_again(
    client, org, team, other_team, version
):
    """The admin sees every team's dataset versions, so the API's lookup takes another team's; the eval set
    is then refused (400) after the task was made: nothing of the call may stay."""
    admin_actor = actor_for(org["admin"])
    foreign_set = Dataset.objects.create(
        name="theirs", owner_team=other_team, kind=DatasetKind.CLASSIFICATION
    )
    foreign_version, _ = upload(admin_actor, foreign_set, jsonl(*labelled(8)))
    client.force_login(org["admin"])
    body = {
        "owner_team_id": team.pk,
        "name": "Ticket routing",
        "kind": "classification",
        "eval_sets": [{"dataset_version_id": version.pk}, {"dataset_version_id": foreign_version.pk}],
    }
    response = client.post("/api/v1/tasks", body, content_type="application/json")
    assert response.status_code == 400 and "task's team" in response.json()["error"]["message"]
    assert not Task.objects.exists() and not EvalSet.objects.exists()
    assert not AuditEvent.objects.filter(action__in=["task.create", "eval_set.create"]).exists()
    body["eval_sets"] = body["eval_sets"][:1]
    response = client.post("/api/v1/tasks", body, content_type="application/json")
    assert response.status_code == 201, response.content


def test_the_run_page_shows_the_scores_or_the_reason_it_failed(
    client, org, engineer, task, endpoint, answers
):
    priced(endpoint, "1.00", "3.00")
    run = start(engineer, task, endpoint, row_limit=24)
    runs.execute(run.pk)
    client.force_login(org["viewer"])
    page = client.get(reverse("eval-run-detail", args=[run.pk])).content.decode()
    assert "25.0%" in page and "50 ms / 50 ms" in page and "0.0160" in page
    assert "Cancel the run" not in page and "every 2s" not in page  # finished: no polling, nothing to cancel
    board = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert "router-ep" in board and "on the front" in board
    failed = start(engineer, task, endpoint)
    EndpointEvalRun.objects.filter(pk=failed.pk).update(status=JobStatus.RUNNING)
    runs.finish(failed.pk, JobStatus.FAILED, "router-ep answered 503: no replica is ready")
    fragment = client.get(reverse("eval-run-detail", args=[failed.pk]), HTTP_HX_REQUEST="true")
    assert "router-ep answered 503: no replica is ready" in fragment.content.decode()
    assert "<html" not in fragment.content.decode()


def test_a_team_keeps_a_bounded_number_of_runs_in_flight(engineer, task, endpoint, settings):
    """Runs share the control workers with the usage flush, the rollups and the reapers: ten long runs of one
    team would have filled every slot and stalled them all."""
    settings.EVAL_RUNS_PER_TEAM = 2
    first = start(engineer, task, endpoint)
    start(engineer, task, endpoint)
    with pytest.raises(Conflict, match="2 eval runs queued or running, the most at once"):
        start(engineer, task, endpoint)
    assert EndpointEvalRun.objects.count() == 2
    runs.cancel_run(actor=engineer, run=first)
    assert start(engineer, task, endpoint).status == JobStatus.QUEUED


def test_a_dead_workers_service_keys_lapse_and_the_reaper_revokes_them(engineer, task, endpoint, team):
    """A worker killed mid-run never reached the revocation in client_for: its key stayed active, with no
    expiry and no limits (the system made it). Keys now lapse after a day, and the reaper revokes them."""
    from serving.gateway import services as key_services
    from serving.gateway.models import ApiKey

    run = start(engineer, task, endpoint)
    with gateway.client_for(team, endpoint.name, f"eval run #{run.pk}") as client:
        key = ApiKey.objects.get(pk=client.key_id)
        assert key.expires_at is not None
        assert key.expires_at <= timezone.now() + key_services.SERVICE_KEY_LIFETIME
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=None)  # as if the worker had died in the block
    other = ApiKey.objects.create(
        team=team, name="eval run #999999", key_id="x" * 12, secret_hash="-", service=True
    )
    old = timezone.now() - timedelta(minutes=10)
    EndpointEvalRun.objects.filter(pk=run.pk).update(status=JobStatus.RUNNING, heartbeat_at=old)
    assert runs.reap_stale(timedelta(minutes=2)) == [run.pk]
    key.refresh_from_db()
    other.refresh_from_db()
    assert key.revoked_at is not None and other.revoked_at is None

"""Deleting a dataset version's stored files must leave none of its rows readable elsewhere: a distilled
version made from it holds every prompt (purge that first), and a task's eval set keeps its rows in its runs'
answers (delete the eval set first, with its runs, through the API or the task's page)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from tests.conftest import actor_for
from tests.training.conftest import jsonl, tickets, upload
from training import dataset_purge, services
from training.choices import DatasetKind, JobStatus
from training.evals import catalogue
from training.evals.models import EndpointEvalRun, EvalSet
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db


def _purge_url(version: DatasetVersion) -> str:
    return f"/api/v1/datasets/{version.dataset_id}/versions/{version.number}/purge"


def _eval_set_url(eval_set: EvalSet) -> str:
    return f"/api/v1/tasks/{eval_set.task_id}/eval-sets/{eval_set.pk}"


@pytest.fixture
def distilled(engineer, team) -> DatasetVersion:
    """The teacher's answers to the prompts of tickets:v1, as ``distillation.record_answers`` keeps them."""
    answers = services.create_dataset(
        actor=engineer, owner_team=team, name="tickets-distilled", kind=DatasetKind.CHAT
    )
    made, _ = upload(engineer, answers, jsonl(*tickets(16)))
    return made


@pytest.fixture
def eval_set(engineer, team, dataset_version) -> EvalSet:
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    return catalogue.add_eval_set(actor=engineer, task=task, dataset_version=dataset_version, source="all")


def _run(eval_set: EvalSet, status: str) -> EndpointEvalRun:
    return EndpointEvalRun.objects.create(
        owner_team=eval_set.task.owner_team,
        eval_set=eval_set,
        endpoint_name="ep",
        row_limit=5,
        status=status,
        answers=[{"prompt": "Ticket 0: something about billing", "expected": "billing", "answer": "billing"}],
    )


def test_a_source_is_refused_while_its_distilled_copy_keeps_its_files_then_purges_after_it(
    client, org, engineer, dataset_version, distilled, make_job
):
    make_job(distilled_dataset_version=distilled, status=JobStatus.SUCCEEDED)
    dataset_purge.archive_version(actor=engineer, version=dataset_version)
    client.force_login(org["engineer"])

    refused = client.post(_purge_url(dataset_version))

    assert refused.status_code == 409, refused.content
    error = refused.json()["error"]
    assert error["code"] == "conflict"
    assert error["message"] == (
        "tickets:v1's files cannot be deleted: its rows are copied in tickets-distilled:v1 (distilled from "
        "it): archive it and delete its stored files first."
    )
    assert DatasetVersion.objects.get(pk=dataset_version.pk).artifact_id is not None

    dataset_purge.archive_version(actor=engineer, version=distilled)
    assert client.post(_purge_url(distilled)).status_code == 200
    allowed = client.post(_purge_url(dataset_version))

    assert allowed.status_code == 200, allowed.content
    assert DatasetVersion.objects.get(pk=dataset_version.pk).artifact_id is None


def test_deleting_an_eval_set_through_the_api_deletes_its_runs_audited_and_frees_its_version(
    client, org, engineer, dataset_version, eval_set
):
    runs = [_run(eval_set, JobStatus.SUCCEEDED), _run(eval_set, JobStatus.FAILED)]
    dataset_purge.archive_version(actor=engineer, version=dataset_version)
    client.force_login(org["engineer"])
    refused = client.post(_purge_url(dataset_version))
    assert (
        refused.status_code == 409
        and "is an eval set of the task Routing" in refused.json()["error"]["message"]
    )

    response = client.delete(_eval_set_url(eval_set))

    assert response.status_code == 204, response.content
    assert not EvalSet.objects.filter(pk=eval_set.pk).exists()
    assert not EndpointEvalRun.objects.filter(pk__in=[run.pk for run in runs]).exists()
    event = AuditEvent.objects.get(action="eval_set.delete")
    assert (event.object_id, event.team_id, event.after) == (
        str(eval_set.pk),
        eval_set.task.owner_team_id,
        None,
    )
    assert event.before == {
        "task": str(eval_set.task),
        "dataset_version": dataset_version.pk,
        "source": "all",
        "label": "tickets:v1 (all rows)",
        "runs_deleted": 2,
    }
    # The task, its page and the portfolio stand without it; the version's files may now go.
    assert client.get(f"/api/v1/tasks/{eval_set.task_id}").json()["eval_sets"] == []
    assert client.get(reverse("task-detail", args=[eval_set.task_id])).status_code == 200
    assert client.get("/api/v1/portfolio").status_code == 200
    assert client.post(_purge_url(dataset_version)).status_code == 200
    assert DatasetVersion.objects.get(pk=dataset_version.pk).artifact_id is None


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_an_eval_set_with_a_run_in_flight_is_refused(client, org, eval_set, status):
    run = _run(eval_set, status)
    client.force_login(org["engineer"])

    response = client.delete(_eval_set_url(eval_set))

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "conflict" and error["request_id"]
    assert error["message"] == (
        f"tickets:v1 (all rows) cannot be deleted: eval run #{run.pk} of it is queued or running; cancel it "
        "or wait for the end."
    )
    assert EndpointEvalRun.objects.filter(pk=run.pk).exists()
    assert not AuditEvent.objects.filter(action="eval_set.delete").exists()


def test_a_viewer_is_refused_and_another_teams_member_does_not_find_it(client, org, other_team, eval_set):
    client.force_login(org["viewer"])
    assert client.delete(_eval_set_url(eval_set)).status_code == 403
    client.force_login(org["outsider"])
    response = client.delete(_eval_set_url(eval_set))
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    # An eval set of another task of the team, named under this task: not found either.
    other = catalogue.create_task(
        actor=actor_for(org["engineer"]), owner_team=eval_set.task.owner_team, name="Other", kind="generation"
    )
    client.force_login(org["engineer"])
    assert client.delete(f"/api/v1/tasks/{other.pk}/eval-sets/{eval_set.pk}").status_code == 404
    assert EvalSet.objects.filter(pk=eval_set.pk).exists()
    assert not AuditEvent.objects.filter(action="eval_set.delete").exists()


def test_the_task_pages_button_deletes_an_eval_set_or_says_why_not(signed_in, org, eval_set):
    page = reverse("task-detail", args=[eval_set.task_id])
    delete = reverse("task-eval-set-delete", args=[eval_set.task_id, eval_set.pk])
    assert delete not in signed_in(org["viewer"]).get(page).content.decode()
    assert signed_in(org["viewer"]).post(delete).status_code == 403
    client = signed_in(org["engineer"])
    assert delete in client.get(page).content.decode()
    run = _run(eval_set, JobStatus.QUEUED)

    text = client.post(delete, follow=True).content.decode()

    assert f"eval run #{run.pk} of it is queued or running" in text
    run.status = JobStatus.CANCELLED
    run.save(update_fields=["status"])
    text = client.post(delete, follow=True).content.decode()
    assert "Eval set tickets:v1 (all rows) deleted, with its 1 run." in text
    assert not EvalSet.objects.filter(pk=eval_set.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_run_started_while_its_eval_set_is_being_deleted_is_not_found_not_a_500(
    engineer, team, dataset_version, eval_set, monkeypatch
):
    """The run's insert waited on the delete's lock and then failed on its foreign key (an IntegrityError,
    a 500): it now reads the eval set under its lock first, and finds it gone."""
    from portfolio.errors import NotFound
    from serving.models import Endpoint
    from tests.interleave import Pause, interleave
    from training.evals import runs

    endpoint = Endpoint.objects.create(owner_team=team, name="ep")
    pause = Pause()
    monkeypatch.setattr(catalogue.audit, "record", pause.hook(catalogue.audit.record))
    deleting, starting = interleave(
        pause,
        lambda: catalogue.delete_eval_set(actor=engineer, eval_set=eval_set),
        lambda: runs.start_run(actor=engineer, task=eval_set.task, eval_set=eval_set, endpoint=endpoint),
    )
    assert deleting.error is None and deleting.result == 0
    assert isinstance(starting.error, NotFound), repr(starting.error)
    assert not EvalSet.objects.filter(pk=eval_set.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_two_deletes_of_one_eval_set_at_once_delete_it_once_and_the_second_is_not_found(
    engineer, eval_set, monkeypatch
):
    """A double click: the second delete waited on the first's lock, then found no row (a DoesNotExist, a
    500)."""
    from portfolio.errors import NotFound
    from tests.interleave import Pause, interleave

    pause = Pause()
    monkeypatch.setattr(catalogue.audit, "record", pause.hook(catalogue.audit.record))
    first, second = interleave(
        pause,
        lambda: catalogue.delete_eval_set(actor=engineer, eval_set=eval_set),
        lambda: catalogue.delete_eval_set(actor=engineer, eval_set=eval_set),
    )
    assert first.error is None and isinstance(second.error, NotFound), repr(second.error)
    assert AuditEvent.objects.filter(action="eval_set.delete").count() == 1

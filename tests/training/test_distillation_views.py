"""The distillation start form: a teacher endpoint the team may call, a prompt dataset version, a student
base version; the same permission gate as the API (owner / member / outsider); the service's refusals
shown on the form. Nothing trains here (``finetune.enqueue`` is recorded); the real thing runs in
tests/e2e/test_serving.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from serving.models import Endpoint
from tests.training.conftest import jsonl, tickets, upload
from training import services
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db
URL = reverse("distillation-create")


@pytest.fixture
def teacher(team) -> Endpoint:
    return Endpoint.objects.create(name="big-teacher", owner_team=team)


@pytest.fixture
def foreign_teacher(other_team) -> Endpoint:
    return Endpoint.objects.create(name="their-teacher", owner_team=other_team)


def form_data(teacher, prompts, student, pool, **extra) -> dict:
    return {"teacher": teacher.name, "prompts": prompts.pk, "student": student.pk, "pool": pool.name, **extra}


def test_an_engineer_starts_a_distillation_and_lands_on_its_job_page(
    client, org, teacher, dataset_version, base, cpu_pool, enqueued, django_capture_on_commit_callbacks
):
    client.force_login(org["engineer"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(URL, form_data(teacher, dataset_version, base, cpu_pool, epochs="2"))
    job = FineTuneJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "job-detail", kwargs={"job_id": job.pk}
    )
    assert (job.teacher_endpoint, job.dataset_version, job.base_version, job.status) == (
        teacher,
        dataset_version,
        base,
        JobStatus.QUEUED,
    )
    assert job.hyperparameters["epochs"] == 2 and job.method == "lora"
    assert [queued.pk for queued in enqueued] == [job.pk]
    assert AuditEvent.objects.filter(action="training.distillation_start", object_id=str(job.pk)).exists()

    page = client.get(response["Location"]).content.decode()
    assert (
        f"Distillation #{job.pk}" in page and "answers of the endpoint <strong>big-teacher</strong>" in page
    )
    assert "stage one not done yet" in page


def test_the_form_offers_only_endpoints_the_team_may_call(
    client, org, teacher, foreign_teacher, base, cpu_pool
):
    client.force_login(org["engineer"])
    html = client.get(URL).content.decode()
    assert 'value="big-teacher"' in html and "their-teacher" not in html
    assert "Start distillation" in html


def test_a_developer_may_call_the_teacher_but_not_train_and_a_viewer_neither(
    client, org, teacher, dataset_version, base, cpu_pool, enqueued
):
    for role in ("developer", "viewer"):
        client.force_login(org[role])
        assert client.get(URL).status_code == 403
        assert client.post(URL, form_data(teacher, dataset_version, base, cpu_pool)).status_code == 403
    assert not FineTuneJob.objects.exists() and not enqueued


def test_an_outsider_does_not_find_the_teacher_or_the_prompts(
    client, org, teacher, foreign_teacher, dataset_version, base, cpu_pool, enqueued
):
    client.force_login(org["outsider"])  # owner of the other team: may train there, sees nothing here
    assert client.get(URL).status_code == 200
    assert client.post(URL, form_data(teacher, dataset_version, base, cpu_pool)).status_code == 404
    assert client.post(URL, form_data(foreign_teacher, dataset_version, base, cpu_pool)).status_code == 404
    assert not FineTuneJob.objects.exists()


def test_a_teacher_of_another_team_is_refused_on_the_form(
    client, org, foreign_teacher, dataset_version, base, cpu_pool, enqueued
):
    client.force_login(org["admin"])  # sees both teams' endpoints
    response = client.post(URL, form_data(foreign_teacher, dataset_version, base, cpu_pool))
    assert response.status_code == 200
    html = response.content.decode()
    assert "their-teacher belongs to Contracts, the prompts to Support AI" in html
    assert not FineTuneJob.objects.exists() and not enqueued


def test_the_services_refusals_show_on_the_form(
    client, org, teacher, dataset_version, base, cpu_pool, enqueued
):
    client.force_login(org["engineer"])
    cpu_pool.nodes.update(heartbeat_at=timezone.now() - timedelta(hours=1))
    response = client.post(URL, form_data(teacher, dataset_version, base, cpu_pool))
    assert response.status_code == 200 and "No ready node in pool cpu" in response.content.decode()

    cpu_pool.nodes.update(heartbeat_at=timezone.now())
    response = client.post(URL, form_data(teacher, dataset_version, base, cpu_pool, batch_size="0"))
    html = response.content.decode()
    assert response.status_code == 200 and "Ensure this value is greater than or equal to 1." in html
    assert '<details class="hp-details" open>' in html  # the refused hyperparameter is in view
    assert not FineTuneJob.objects.exists() and not enqueued


def test_the_jobs_list_offers_the_distillation_form_to_those_who_may_train(client, org, make_job, teacher):
    make_job(teacher_endpoint=teacher)
    client.force_login(org["engineer"])
    html = client.get(reverse("job-list")).content.decode()
    assert f'href="{URL}"' in html and "distilled from big-teacher" in html
    client.force_login(org["viewer"])
    assert f'href="{URL}"' not in client.get(reverse("job-list")).content.decode()


def test_a_distillation_page_links_the_teachers_answers_once_stage_one_is_done(
    client, org, engineer, team, make_job, teacher
):
    answers_set = services.create_dataset(
        actor=engineer, owner_team=team, name="tickets-distilled", kind="chat"
    )
    answers, _ = upload(engineer, answers_set, jsonl(*tickets(12)))
    job = make_job(teacher_endpoint=teacher, distilled_dataset_version=answers, status=JobStatus.RUNNING)
    client.force_login(org["viewer"])
    html = client.get(reverse("job-detail", kwargs={"job_id": job.pk})).content.decode()
    link = reverse("dataset-version", kwargs={"team": team.slug, "name": "tickets-distilled", "number": 1})
    assert f'<a href="{link}">tickets-distilled v1</a>' in html and "endpoint big-teacher" in html

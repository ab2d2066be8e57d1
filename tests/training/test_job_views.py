"""The fine-tuning pages: the jobs list, the start form with the service's refusals, a job's live page
(polling only while it runs), cancelling, and the eval results beside the base's.

Jobs are rows made here with the state under test; nothing trains (``finetune.enqueue`` is replaced)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from training import finetune
from training.choices import JobStatus, Method
from training.models import EvalRun, FineTuneJob

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
LOSS = [[step, round(2.5 / step, 4)] for step in range(1, 41)]


@pytest.fixture
def running_job(make_job) -> FineTuneJob:
    return make_job(
        status=JobStatus.RUNNING,
        started_at=timezone.now() - timedelta(minutes=2),
        heartbeat_at=timezone.now(),
        step=40,
        total_steps=160,
        tokens_per_second=812.4,
        loss_curve=LOSS,
        eval_curve=[[20, 0.9], [40, 0.6]],
        hyperparameters={"method": "lora", "epochs": 8, "learning_rate": 0.001, "batch_size": 4, "lora_r": 8},
        log_tail="step 40/160 loss 0.0625",
    )


def job_url(job: FineTuneJob, name: str = "job-detail") -> str:
    return reverse(name, kwargs={"job_id": job.pk})


def start_data(base, dataset_version, pool, **extra) -> dict:
    return {
        "base_version": base.pk,
        "dataset_version": dataset_version.pk,
        "pool": pool.name,
        "method": Method.LORA,
        **extra,
    }


# --- Starting a job --------------------------------------------------------------------------------
def test_an_engineer_starts_a_job_from_the_form_and_it_is_queued_audited_and_enqueued(
    client, org, base, dataset_version, cpu_pool, enqueued, django_capture_on_commit_callbacks
):
    client.force_login(org["engineer"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("job-create"), start_data(base, dataset_version, cpu_pool, epochs="3", lora_r="")
        )
    job = FineTuneJob.objects.get()
    assert response.status_code == 302 and response["Location"] == job_url(job)
    assert (job.status, job.method, job.node.name, job.target_model) == (
        JobStatus.QUEUED,
        Method.LORA,
        "node-a",
        base.model,
    )
    # Blank: chosen when the run starts, from the rows and the base (training.defaults.Hyperparameters.resolved).
    assert job.hyperparameters["epochs"] == 3 and "lora_r" not in job.hyperparameters
    assert AuditEvent.objects.filter(action="training.job_start", object_id=str(job.pk)).exists()
    assert [queued.pk for queued in enqueued] == [job.pk]


def test_qlora_on_a_cpu_pool_shows_the_services_refusal_and_starts_nothing(
    client, org, base, dataset_version, cpu_pool, enqueued
):
    client.force_login(org["engineer"])
    response = client.post(reverse("job-create"), start_data(base, dataset_version, cpu_pool, method="qlora"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "QLoRA needs a GPU pool" in html and "use LoRA on CPU pools" in html
    assert not FineTuneJob.objects.exists() and not enqueued


def test_a_pool_without_a_ready_node_is_refused_with_the_reason(
    client, org, base, dataset_version, cpu_pool, enqueued
):
    cpu_pool.nodes.update(heartbeat_at=timezone.now() - timedelta(hours=1))
    client.force_login(org["engineer"])
    response = client.post(reverse("job-create"), start_data(base, dataset_version, cpu_pool))
    assert response.status_code == 200 and "No ready node in pool cpu" in response.content.decode()
    assert not FineTuneJob.objects.exists()


def test_a_viewer_may_not_start_a_job_and_an_outsider_does_not_find_the_dataset_version(
    client, org, base, dataset_version, cpu_pool, enqueued
):
    client.force_login(org["viewer"])
    assert client.post(reverse("job-create"), start_data(base, dataset_version, cpu_pool)).status_code == 403
    assert client.get(reverse("job-create")).status_code == 403
    client.force_login(org["outsider"])
    assert client.post(reverse("job-create"), start_data(base, dataset_version, cpu_pool)).status_code == 404
    assert not FineTuneJob.objects.exists()


def test_an_id_too_long_for_a_number_is_refused_or_ignored_not_a_server_error(
    client, org, base, dataset_version, cpu_pool, enqueued
):
    client.force_login(org["engineer"])
    client.raise_request_exception = False  # int() refuses a string over 4,300 digits: once a 500
    huge = "1" * 5000
    response = client.post(
        reverse("job-create"), start_data(base, dataset_version, cpu_pool, base_version=huge)
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert client.get(reverse("job-create"), {"base_version": huge}).status_code == 200
    targets = client.get(reverse("job-targets"), {"base_version": base.pk, "dataset_version": huge})
    assert targets.status_code == 200
    assert client.get(reverse("job-targets"), {"base_version": "9" * 19}).status_code == 200
    assert not FineTuneJob.objects.exists()


def test_fine_tune_on_this_version_opens_the_form_prefilled(client, org, base, dataset_version, cpu_pool):
    client.force_login(org["engineer"])
    page = client.get(
        reverse(
            "dataset-version",
            kwargs={"team": dataset_version.dataset.owner_team.slug, "name": "tickets", "number": 1},
        )
    ).content.decode()
    link = re.search(r'href="([^"]+)">Fine-tune on this version', page)
    assert link and f"dataset_version={dataset_version.pk}" in link.group(1)
    html = client.get(
        reverse("job-create") + f"?base_version={base.pk}&dataset_version={dataset_version.pk}"
    ).content.decode()
    assert f'<option value="{base.pk}" selected>' in html
    assert f'<option value="{dataset_version.pk}" selected>' in html
    assert 'value="lora"' in html and "QLoRA (GPU pools only)" in html
    assert "adapt to the dataset size" in html

    client.force_login(org["viewer"])
    page = client.get(
        reverse("dataset-version", kwargs={"team": "support-ai", "name": "tickets", "number": 1})
    ).content.decode()
    assert "Fine-tune on this version" not in page


# --- A job's page ----------------------------------------------------------------------------------
def test_a_running_job_page_polls_and_shows_its_progress_and_loss_chart(client, org, running_job):
    client.force_login(org["viewer"])
    html = client.get(job_url(running_job)).content.decode()
    assert f'hx-get="{job_url(running_job)}" hx-trigger="every 2s"' in html
    assert '<progress class="progress" max="100" value="25"' in html and "40 / 160" in html
    assert "<svg" in html and 'class="chart-line chart-line--train"' in html
    assert "chart-dot--eval" in html  # eval loss points
    assert "812" in html  # tokens per second
    assert "step 40/160 loss 0.0625" not in html  # the log tail: for those who run the team's fine-tunes
    assert "Cancel job" not in html  # a viewer may not cancel

    client.force_login(org["engineer"])
    html = client.get(job_url(running_job)).content.decode()
    assert "Cancel job" in html and "step 40/160 loss 0.0625" in html


def test_an_errored_jobs_traceback_and_log_are_only_for_those_who_run_the_teams_fine_tunes(
    client, org, make_job
):
    """A viewer (and an auditor) read the trainer's traceback (node paths) and its last log lines (which can
    carry rows of the data), where an engine's logs are kept to those who run the deployment."""
    job = make_job(
        status=JobStatus.ERRORED,
        finished_at=timezone.now(),
        status_detail='Traceback: File "/srv/node-7/portfolio/training/lora.py", line 3',
        log_tail="row 17: my card number is 4111",
    )
    for reader in ("viewer", "auditor"):
        client.force_login(org[reader])
        html = client.get(job_url(job)).content.decode()
        assert "node-7" not in html and "4111" not in html, reader
        assert "Its traceback is shown to those who run the team" in html
        detail = client.get(f"/api/v1/training/jobs/{job.pk}").json()["status_detail"]
        assert "node-7" not in detail and "traceback is shown" in detail
    client.force_login(org["engineer"])
    html = client.get(job_url(job)).content.decode()
    assert "node-7" in html and "4111" in html
    assert "node-7" in client.get(f"/api/v1/training/jobs/{job.pk}").json()["status_detail"]


def test_the_poll_answers_the_live_parts_and_a_finished_job_stops_polling(client, org, running_job):
    client.force_login(org["viewer"])
    fragment = client.get(job_url(running_job), **HTMX)
    text = fragment.content.decode()
    assert text.lstrip().startswith('<section id="job-progress"') and 'hx-trigger="every 2s"' in text
    assert 'id="job-curves" class="card" aria-labelledby="curves-heading" hx-swap-oob="true"' in text
    assert "HX-Refresh" not in fragment

    FineTuneJob.objects.filter(pk=running_job.pk).update(
        status=JobStatus.SUCCEEDED, step=160, finished_at=timezone.now()
    )
    finished = client.get(job_url(running_job), **HTMX)
    assert finished["HX-Refresh"] == "true" and "hx-trigger" not in finished.content.decode()
    html = client.get(job_url(running_job)).content.decode()
    assert "hx-trigger" not in html and "Updating every" not in html
    assert 'value="100"' in html and "<svg" in html


def test_a_failed_job_shows_its_reason_and_log_in_a_red_callout(client, org, make_job):
    job = make_job(
        status=JobStatus.FAILED,
        status_detail="the trainer exited (signal 9) on attempt 3; giving up.",
        log_tail="Killed\n",
        finished_at=timezone.now(),
    )
    client.force_login(org["engineer"])
    html = client.get(job_url(job)).content.decode()
    callout = html[html.index('class="alert alert--error callout"') :]
    assert callout.index("signal 9") < callout.index("Killed") < callout.index("</div>")
    assert "hx-trigger" not in html
    client.force_login(org["viewer"])  # the reason, not the trainer's log
    callout = client.get(job_url(job)).content.decode().split('class="alert alert--error callout"')[1]
    assert "signal 9" in callout.split("</div>")[0] and "Killed" not in callout.split("</div>")[0]


def test_an_outsider_does_not_find_a_job(client, org, running_job):
    client.force_login(org["outsider"])
    assert client.get(job_url(running_job)).status_code == 404
    assert client.post(job_url(running_job, "job-cancel")).status_code == 404
    assert f"#{running_job.pk}" not in client.get(reverse("job-list")).content.decode()


def test_the_produced_version_links_to_the_registry(client, org, finished_job):
    job = finished_job
    client.force_login(org["viewer"])
    html = client.get(job_url(job)).content.decode()
    assert f'href="{reverse("version-detail", kwargs={"name": "smol-base", "number": 2})}"' in html


# --- Cancelling ------------------------------------------------------------------------------------
def test_cancelling_a_running_job_asks_its_node_to_stop_and_is_audited(client, org, running_job):
    client.force_login(org["engineer"])
    response = client.post(job_url(running_job, "job-cancel"), follow=True)
    running_job.refresh_from_db()
    assert running_job.cancel_requested and running_job.status == JobStatus.RUNNING
    assert AuditEvent.objects.filter(action="training.job_cancel", object_id=str(running_job.pk)).exists()
    html = response.content.decode()
    assert "Stopping fine-tune" in html and "Cancelling: the node is stopping the trainer" in html
    assert "Cancel job" not in html


def test_cancelling_a_queued_job_ends_it_at_once_and_a_viewer_may_not(client, org, make_job):
    job = make_job()
    client.force_login(org["viewer"])
    assert client.post(job_url(job, "job-cancel")).status_code == 403
    client.force_login(org["engineer"])
    client.post(job_url(job, "job-cancel"))
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert AuditEvent.objects.filter(action="training.job_cancel").count() == 1
    again = client.post(job_url(job, "job-cancel"), follow=True)
    assert "The job already cancelled." in again.content.decode()


# --- Eval results ----------------------------------------------------------------------------------
def test_eval_results_show_base_and_tuned_accuracy_side_by_side_with_the_change(
    client, org, make_job, base, dataset_version, finished_job
):
    job, tuned = finished_job, finished_job.output_version
    # The base was scored by an earlier job on the same dataset version: its run is reused.
    earlier = make_job(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    EvalRun.objects.create(
        version=base,
        dataset_version=dataset_version,
        job=earlier,
        status="succeeded",
        metrics={
            "rows": 40,
            "accuracy": 0.25,
            "exact_match": 0.2,
            "contains": 0.3,
            "perplexity": 40.5,
            "f1_by_label": {"billing": 0.4, "shipping": 0.1},
            "label_counts": {"billing": 25, "shipping": 15},
        },
    )
    EvalRun.objects.create(
        version=tuned,
        dataset_version=dataset_version,
        job=job,
        status="succeeded",
        metrics={
            "rows": 40,
            "accuracy": 0.925,
            "exact_match": 0.9,
            "contains": 0.95,
            "perplexity": 1.8,
            "f1_by_label": {"billing": 0.95, "shipping": 0.05},
            "label_counts": {"billing": 25, "shipping": 15},
            "confusion": {"billing": {"billing": 25}, "shipping": {"(other)": 2, "billing": 13}},
        },
    )
    client.force_login(org["viewer"])
    html = client.get(job_url(job)).content.decode()
    evals = html[html.index('id="job-evals"') :]
    accuracy = re.search(r"Accuracy</th>(.*?)</tr>", evals, re.S).group(1)
    assert re.findall(r'<td class="num">([^<]+)</td>', accuracy) == ["25.0%", "92.5%"]
    assert '<span class="delta delta--better">+67.5 pts</span>' in accuracy
    assert '<span class="delta delta--better">−38.70</span>' in evals  # perplexity fell: better
    assert '<span class="delta delta--worse">−0.05</span>' in evals  # shipping F1 got worse
    assert "smol-base:v1" in evals and "smol-base:v2" in evals
    # The fine-tuned model's confusion: billing's 25 right, shipping's 13 answered billing and 2 no label.
    confusion = evals[evals.index("Where the fine-tuned model") :]
    header = re.search(r"<thead>(.*?)</thead>", confusion, re.S).group(1)
    assert re.findall(r'<th scope="col" class="num">([^<]+)</th>', header) == [
        "billing",
        "shipping",
        "(Other)",  # the run's stored "(other)" column: it was scored before OTHER was capitalised
    ]
    cells = re.findall(r'<td class="num([^"]*)">(\d+)</td>', confusion.split("</table>")[0])
    assert cells == [
        (" confusion--hit", "25"),
        ("", "0"),
        ("", "0"),
        (" confusion--miss", "13"),
        ("", "0"),
        (" confusion--miss", "2"),
    ]


# --- The list --------------------------------------------------------------------------------------
def test_the_list_shows_the_teams_jobs_filters_by_status_and_polls_while_one_runs(
    client, org, make_job, running_job, django_assert_max_num_queries
):
    done = make_job(status=JobStatus.SUCCEEDED, step=160, total_steps=160, finished_at=timezone.now())
    for _ in range(5):
        make_job(status=JobStatus.FAILED, step=3, total_steps=160)
    client.force_login(org["viewer"])
    with django_assert_max_num_queries(8):
        html = client.get(reverse("job-list")).content.decode()
    assert "7 jobs" in html and html.count('class="job-progress"') == 7
    assert "40 / 160 · 25%" in html and "tickets v1" in html and "smol-base:v1" in html
    assert 'hx-trigger="every 5s"' in html
    assert "Start a fine-tune" not in html  # a viewer may not

    filtered = client.get(reverse("job-list") + "?status=succeeded", **HTMX).content.decode()
    assert filtered.lstrip().startswith('<section id="job-results"')
    assert f'href="{job_url(done)}"' in filtered and f'href="{job_url(running_job)}"' not in filtered
    assert "hx-trigger" not in filtered  # nothing on this page runs: no polling


def test_the_training_home_links_to_the_jobs(client, org):
    client.force_login(org["viewer"])
    html = client.get(reverse("training-list")).content.decode()
    assert f'href="{reverse("job-list")}"' in html


def test_a_queued_job_waits_for_its_node_in_the_list_and_on_its_page(
    client, org, engineer, base, dataset_version, cpu_pool, enqueued
):
    job = finetune.start_job(
        actor=engineer, base_version=base, dataset_version=dataset_version, pool=cpu_pool
    )
    client.force_login(org["engineer"])
    html = client.get(reverse("job-list")).content.decode()
    assert f'href="{job_url(job)}"' in html and "waiting for node-a" in html
    page = client.get(job_url(job)).content.decode()
    assert 'hx-trigger="every 2s"' in page and "Automatic values are chosen from the" in page


def test_a_jobs_page_shows_its_compute_cost_from_the_billing_ledger(client, org, running_job):
    from portfolio.billing import meters, money
    from portfolio.billing import services as billing_services
    from portfolio.billing.choices import ComputeKind, PriceKind
    from portfolio.billing.subjects import Subject
    from tests.conftest import actor_for

    job, pool = running_job, running_job.pool
    start = money.month_bounds(money.month_start(timezone.now()))[0]
    billing_services.set_price(
        actor=actor_for(org["admin"]), subject=Subject(PriceKind.POOL, str(pool.pk), pool.name),
        effective_from=start, cpu_core_hour="1.5",
    )  # fmt: skip
    began = max(start, timezone.now() - timedelta(hours=2))
    meters.record_interval(
        key=f"job:finetune:{job.pk}:1", kind=ComputeKind.JOB, team_id=job.owner_team_id,
        department_id=job.owner_team.department_id, subject=f"fine-tune #{job.pk}", pool_id=pool.pk,
        pool=pool.name, gpus=0, cpu_cores=2, memory_bytes=0, started_at=began, ended_at=began + timedelta(minutes=30),
    )  # fmt: skip
    client.force_login(org["viewer"])
    html = client.get(job_url(job)).content.decode()
    # 2 cores for half an hour at 1.50 a core-hour.
    assert "Compute cost" in html and "1.50 EUR" in html

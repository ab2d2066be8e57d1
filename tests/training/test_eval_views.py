"""Eval results on the pages: the serving figures (latency p50, tokens/s) beside the scores on a job's
comparison and on the evaluations list, and "not deployed" where no replica served the version."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from training.models import EvalRun

pytestmark = pytest.mark.django_db

MEASURED = {
    "deployed": True,
    "replica": 7,
    "deployment": "smol-dep",
    "node": "node-a",
    "model": "smol-dep",
    "requests": 8,
    "max_tokens": 16,
    "completion_tokens": 40,
    "latency_p50_ms": 412.3,
    "latency_max_ms": 650.0,
    "tokens_per_second": 12.5,
}
NOT_DEPLOYED = {"deployed": False, "note": "smol-base:v2 was not deployed (no ready replica) when evaluated."}


@pytest.fixture
def evaluated(finished_job, base, dataset_version):
    """A finished job whose base was timed on a replica and whose result was not deployed."""
    job, tuned = finished_job, finished_job.output_version
    for version, accuracy, serving in ((base, 0.25, MEASURED), (tuned, 0.9, NOT_DEPLOYED)):
        EvalRun.objects.create(
            version=version,
            dataset_version=dataset_version,
            job=job,
            status="succeeded",
            metrics={"rows": 4, "accuracy": accuracy, "perplexity": 3.0, "serving": serving},
            finished_at=timezone.now(),
        )
    return job


def cells(html: str, label: str) -> list[str]:
    row = re.search(rf"{label}</th>(.*?)</tr>", html, re.S).group(1)
    return re.findall(r'<td class="num">([^<]*)</td>', row)


def test_the_job_comparison_shows_the_base_replicas_speed_and_says_the_result_was_not_deployed(
    client, org, evaluated
):
    client.force_login(org["viewer"])
    html = client.get(reverse("job-detail", kwargs={"job_id": evaluated.pk})).content.decode()
    evals = html[html.index('id="job-evals"') :]
    # Base, fine-tuned, and no change to show.
    assert cells(evals, "Latency p50 on a serving replica") == ["412 ms", "not deployed", ""]
    assert cells(evals, "Tokens/s on a serving replica") == ["12.5", "not deployed", ""]
    assert (
        "Measured on replica #7 of smol-dep on node-a: 8 requests one at a time, up to 16 tokens each."
        in evals
    )
    assert "smol-base:v2 was not deployed (no ready replica) when evaluated." in evals


def test_both_versions_timed_show_the_change_in_latency(client, org, evaluated):
    EvalRun.objects.filter(version__number=2).update(
        metrics={"accuracy": 0.9, "serving": {**MEASURED, "latency_p50_ms": 300.0, "tokens_per_second": 20.0}}
    )
    client.force_login(org["viewer"])
    html = client.get(reverse("job-detail", kwargs={"job_id": evaluated.pk})).content.decode()
    latency = re.search(r"Latency p50 on a serving replica</th>(.*?)</tr>", html, re.S).group(1)
    assert '<span class="delta delta--better">−112 ms</span>' in latency  # faster is better
    assert '<span class="delta delta--better">+7.5</span>' in html  # tokens/s up


def test_runs_evaluated_before_serving_was_measured_show_no_serving_rows(client, org, evaluated):
    EvalRun.objects.update(metrics={"accuracy": 0.5})
    client.force_login(org["viewer"])
    html = client.get(reverse("job-detail", kwargs={"job_id": evaluated.pk})).content.decode()
    assert "Accuracy</th>" in html and "on a serving replica" not in html


def test_the_evaluations_list_shows_each_runs_score_and_speed_to_its_team_only(
    client, org, evaluated, django_assert_max_num_queries
):
    client.force_login(org["viewer"])
    with django_assert_max_num_queries(6):
        html = client.get(reverse("eval-list")).content.decode()
    assert "2 eval runs" in html
    base_row = re.search(r"smol-base:v1</a>.*?</tr>", html, re.S).group(0)
    assert re.findall(r'<td class="num"[^>]*>([^<]*)</td>', base_row) == ["25.0%", "3.00", "412 ms", "12.5"]
    tuned_row = re.search(r"smol-base:v2</a>.*?</tr>", html, re.S).group(0)
    assert re.findall(r'<td class="num"[^>]*>([^<]*)</td>', tuned_row) == [
        "90.0%",
        "3.00",
        "not deployed",
        "not deployed",
    ]
    assert f'href="{reverse("job-detail", kwargs={"job_id": evaluated.pk})}"' in html

    client.force_login(org["outsider"])
    html = client.get(reverse("eval-list")).content.decode()
    assert "0 eval runs" in html and "smol-base" not in html


def test_a_teams_runs_of_a_shared_base_on_its_own_data_are_not_shown_to_other_teams(
    client, org, base, evaluated
):
    """The base is shared with the whole organisation; the runs of it were on the team's private dataset:
    their labels, counts and confusion are the team's, not every team's that sees the base."""
    from tests.serving.conftest import share_with_everyone

    share_with_everyone(base)
    client.force_login(org["outsider"])  # owner of another team, who sees the base
    listed = client.get("/api/v1/training/evals", {"version_id": base.pk})
    assert listed.status_code == 200 and listed.json()["items"] == []
    page = client.get(reverse("eval-list"))
    assert page.status_code == 200 and b"412" not in page.content and b"support" not in page.content.lower()
    client.force_login(org["viewer"])  # the team's own still see them
    assert len(client.get("/api/v1/training/evals", {"version_id": base.pk}).json()["items"]) == 1

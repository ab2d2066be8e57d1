"""The training pages: datasets the viewer may see, uploads with errors by line, version previews."""

from __future__ import annotations

import io
import re

import pytest
from django.urls import reverse

from tests.conftest import actor_for
from tests.training.conftest import chat, jsonl, tickets, upload, work_off_ingests
from training import services
from training.choices import DatasetKind
from training.models import Dataset, DatasetVersion

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def as_file(content: bytes) -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = "rows.jsonl"
    return handle


def page_url(dataset: Dataset, name: str = "dataset-detail", **kwargs) -> str:
    return reverse(name, kwargs={"team": dataset.owner_team.slug, "name": dataset.name, **kwargs})


def test_the_list_shows_only_datasets_of_the_viewers_teams(client, org, engineer, chat_set, other_team):
    services.create_dataset(actor=actor_for(org["outsider"]), owner_team=other_team, name="contracts")
    upload(engineer, chat_set, jsonl(*tickets(12)))
    client.force_login(org["viewer"])
    html = client.get(reverse("training-list")).content.decode()
    assert "tickets" in html and "contracts" not in html
    assert "New dataset" not in html  # a viewer may not create one
    client.force_login(org["engineer"])
    assert "New dataset" in client.get(reverse("training-list")).content.decode()


def test_the_list_runs_a_fixed_number_of_queries(client, org, engineer, team, django_assert_max_num_queries):
    for i in range(6):
        dataset = services.create_dataset(actor=engineer, owner_team=team, name=f"set-{i}")
        upload(engineer, dataset, jsonl(*tickets(3 + i)))
    client.force_login(org["viewer"])
    with django_assert_max_num_queries(10):
        response = client.get(reverse("training-list"))
    assert response.content.decode().count("set-") >= 6


def test_creating_a_dataset_leads_to_its_upload_page(client, org, team):
    client.force_login(org["engineer"])
    response = client.post(
        reverse("dataset-create"), {"name": "Intents", "owner_team": team.pk, "kind": "classification"}
    )
    dataset = Dataset.objects.get(name="intents")
    assert dataset.kind == DatasetKind.CLASSIFICATION
    assert response.status_code == 302 and response["Location"] == page_url(dataset, "dataset-upload")


def test_an_upload_with_errors_shows_them_by_line_and_creates_nothing(client, org, chat_set):
    client.force_login(org["engineer"])
    content = jsonl(
        chat("a", "billing"), "[1]", "", {"messages": [{"role": "robot", "content": "x"}]}, *(["{"] * 60)
    )
    response = client.post(
        page_url(chat_set, "dataset-upload"), {"file": as_file(content), "eval_fraction": "0.1", "seed": "42"}
    )
    (ingest,) = work_off_ingests()
    assert response["Location"] == page_url(chat_set, "dataset-ingest", ingest_id=ingest.pk)
    response = client.get(response["Location"])
    assert response.status_code == 200
    html = response.content.decode()
    assert "62 problems in 64 lines" in html and "no version was created" in html
    lines = re.findall(r'<th scope="row" class="num">(\d+)</th>', html)
    assert lines[:3] == ["2", "4", "5"] and len(lines) == 50
    assert "The first 50 are listed" in html and "Empty lines (skipped): 3" in html
    assert not DatasetVersion.objects.exists()


def test_a_good_upload_opens_the_new_version_and_a_repeat_says_so(client, org, chat_set):
    client.force_login(org["engineer"])
    content = jsonl(*tickets(20))
    response = client.post(
        page_url(chat_set, "dataset-upload"), {"file": as_file(content), "eval_fraction": "0.1", "seed": "42"}
    )
    work_off_ingests()
    response = client.get(response["Location"])  # the ingest's page, once it has run
    assert response.status_code == 302 and response["Location"] == page_url(
        chat_set, "dataset-version", number=1
    )
    response = client.post(
        page_url(chat_set, "dataset-upload"), {"file": as_file(content), "eval_fraction": "0.1", "seed": "42"}
    )
    work_off_ingests()
    response = client.get(response["Location"], follow=True)
    assert "identical to version 1" in response.content.decode()


def test_a_viewer_cannot_open_the_upload_page_and_an_outsider_does_not_find_the_dataset(
    client, org, chat_set
):
    client.force_login(org["viewer"])
    assert client.get(page_url(chat_set)).status_code == 200
    assert client.get(page_url(chat_set, "dataset-upload")).status_code == 403
    client.force_login(org["outsider"])
    assert client.get(page_url(chat_set)).status_code == 404


def test_the_version_page_shows_statistics_a_histogram_and_chat_bubbles(client, org, engineer, chat_set):
    version, _ = upload(engineer, chat_set, jsonl(*tickets(30)))
    client.force_login(org["viewer"])
    html = client.get(page_url(chat_set, "dataset-version", number=1)).content.decode()
    assert 'class="histogram"' in html and html.count('class="hist-bar') >= 1
    # Four queues as answers: the page says the split was stratified by them, and counts them.
    assert "stratified by answer (the answers are 4 classes)" in html and ">Answers <span" in html
    assert "bubble bubble--assistant" in html and "bubble bubble--system" in html
    assert "in characters: no tokenizer was chosen" in html
    assert "train.jsonl" in html and "eval.jsonl" in html

    fragment = client.get(page_url(chat_set, "dataset-version", number=1) + "?split=eval", **HTMX)
    text = fragment.content.decode()
    assert (
        text.lstrip().startswith('<section id="dataset-rows"')
        and text.count('class="dataset-row"') == version.eval_count == 3
    )


def test_a_page_of_rows_shows_at_most_4_mib_of_them(client, org, engineer, chat_set):
    """A page read and parsed its 20 rows whole (up to 20 MiB) to show 1,200 characters of each; rows past
    4 MiB say their size instead, and a system prompt's one-line preview is cut as its text is."""
    big = [chat(f"Ticket {i}: " + "word " * 180_000, ["billing", "technical"][i % 2]) for i in range(8)]
    upload(engineer, chat_set, jsonl(*big, *tickets(12)))
    client.force_login(org["viewer"])
    response = client.get(page_url(chat_set, "dataset-version", number=1))
    html = response.content.decode()
    assert response.status_code == 200 and len(html) < 5 * 2**20
    assert "more than this page shows; the train file, above, has it whole." in html


def test_classification_rows_show_their_label_and_the_distribution(client, org, engineer, labels_set):
    rows = [{"text": f"text {i}", "label": label} for label in ("refund", "bug") for i in range(10)]
    upload(engineer, labels_set, jsonl(*rows))
    client.force_login(org["engineer"])
    html = client.get(page_url(labels_set, "dataset-version", number=1)).content.decode()
    assert html.count('class="label-bars"') == 1 and "refund" in html
    assert '<span class="badge badge--label" title="label">' in html

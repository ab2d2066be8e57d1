"""Training REST endpoints: datasets, multipart uploads with line-numbered errors, statistics and rows."""

from __future__ import annotations

import io

import pytest

from tests.training.conftest import chat, jsonl, tickets, upload, work_off_ingests
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db


def as_file(content: bytes, name: str = "rows.jsonl") -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = name
    return handle


def ingested(client, dataset_id: int, accepted: dict) -> dict:
    """The upload's ingest once a worker has run it, as the API shows it."""
    assert accepted["status"] == "queued"
    work_off_ingests()
    return client.get(f"/api/v1/datasets/{dataset_id}/ingests/{accepted['id']}").json()


def test_a_datasets_description_is_bounded_as_the_forms_is(client, org, team):
    client.force_login(org["engineer"])
    wordy = {"name": "tickets", "owner_team_id": team.pk, "description": "x" * 5001}
    response = client.post("/api/v1/datasets", wordy, content_type="application/json")
    assert response.status_code == 422 and "description" in response.json()["error"]["fields"], (
        response.content
    )
    assert client.get("/api/v1/datasets").json()["count"] == 0


def test_an_engineer_creates_a_dataset_and_uploads_a_version(client, org, team):
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/datasets",
        {"name": "tickets", "owner_team_id": team.pk, "kind": "chat", "description": "Support tickets"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    dataset = response.json()
    assert dataset["team"] == team.slug and dataset["latest_version"] is None

    content = jsonl(*tickets(30))
    response = client.post(
        f"/api/v1/datasets/{dataset['id']}/versions", {"file": as_file(content), "eval_fraction": "0.2"}
    )
    assert response.status_code == 202, response.content
    response = ingested(client, dataset["id"], response.json())
    assert response["status"] == "succeeded" and response["created_version"], response
    version = client.get(f"/api/v1/datasets/{dataset['id']}/versions/{response['version']}").json()
    assert (version["number"], version["row_count"], version["train_count"], version["eval_count"]) == (
        1,
        30,
        24,
        6,
    )
    assert version["stats"]["lengths"]["unit"] == "characters"
    assert {f["path"] for f in version["files"]} == {"train.jsonl", "eval.jsonl", "original.jsonl"}

    again = client.post(f"/api/v1/datasets/{dataset['id']}/versions", {"file": as_file(content)})
    again = ingested(client, dataset["id"], again.json())
    assert not again["created_version"] and again["version"] == version["number"]
    listed = client.get("/api/v1/datasets").json()
    assert listed["count"] == 1 and listed["items"][0]["latest_version"] == 1


def test_a_bad_file_fails_its_ingest_with_line_numbered_errors_and_creates_nothing(client, org, chat_set):
    client.force_login(org["engineer"])
    content = jsonl(
        chat("a", "billing"), "{oops", chat("b", "account"), {"messages": [{"role": "user", "content": "?"}]}
    )
    response = client.post(f"/api/v1/datasets/{chat_set.pk}/versions", {"file": as_file(content)})
    assert response.status_code == 202
    response = ingested(client, chat_set.pk, response.json())
    assert response["status"] == "failed" and response["version"] is None
    error = response["error"]
    assert error["code"] == "invalid_dataset"
    assert error["fields"]["file"][0].startswith("line 2: not valid JSON")
    assert error["fields"]["file"][1].startswith("line 4: the last message must be the assistant's answer")
    assert "2 problems in 4 lines" in error["message"]
    assert not DatasetVersion.objects.exists()


def test_a_viewer_reads_but_cannot_upload_and_an_outsider_sees_nothing(client, org, engineer, chat_set):
    upload(engineer, chat_set, jsonl(*tickets(12)))
    client.force_login(org["viewer"])
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1").status_code == 200
    response = client.post(f"/api/v1/datasets/{chat_set.pk}/versions", {"file": as_file(jsonl(*tickets(3)))})
    assert response.status_code == 403
    client.force_login(org["outsider"])
    assert client.get("/api/v1/datasets").json()["count"] == 0
    assert client.get(f"/api/v1/datasets/{chat_set.pk}").status_code == 404
    assert client.post(f"/api/v1/datasets/{chat_set.pk}/versions", {"file": as_file(b"")}).status_code == 404
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/rows").status_code == 404


def test_rows_are_paginated_per_split_and_files_download(client, org, engineer, chat_set):
    upload(engineer, chat_set, jsonl(*tickets(50)))
    client.force_login(org["viewer"])
    page = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/rows?page=2&page_size=10").json()
    assert page["count"] == 45 and [item["index"] for item in page["items"]] == list(range(11, 21))
    assert page["items"][0]["row"]["messages"][-1]["role"] == "assistant"
    evaluation = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/rows?split=eval").json()
    assert evaluation["count"] == 5 and len(evaluation["items"]) == 5
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/rows?split=test").status_code == 422

    response = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/files/eval.jsonl")
    assert response.status_code == 200
    assert len(b"".join(response.streaming_content).splitlines()) == 5
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/files/secret.txt").status_code == 404


def test_a_page_of_rows_holds_at_most_4_mib_of_them(client, org, engineer, chat_set):
    """Rows of up to 1 MiB each, 200 to a page, made responses of 200 MiB (parsed whole in memory first).
    A page parses rows until 4 MiB; those after are given without their content, with their size, and a
    page's first row is always whole (page_size=1 reads any row)."""
    big = [chat(f"Ticket {i}: " + "word " * 180_000, ["billing", "technical"][i % 2]) for i in range(8)]
    upload(engineer, chat_set, jsonl(*big, *tickets(12)))
    client.force_login(org["viewer"])
    url = f"/api/v1/datasets/{chat_set.pk}/versions/1/rows"
    page = client.get(f"{url}?page_size=20").json()
    sizes = [item["bytes"] for item in page["items"]]
    shown = [item for item in page["items"] if item["row"] is not None]
    assert 0 < sum(item["bytes"] for item in shown) <= 4 * 2**20 < sum(sizes)
    cut = next(i for i, item in enumerate(page["items"]) if item["row"] is None)
    assert all(item["row"] is None for item in page["items"][cut:]), "in order: nothing shown past the cut"
    alone = client.get(f"{url}?page_size=1&page={cut + 1}").json()["items"]
    assert alone[0]["row"]["messages"] and alone[0]["bytes"] == sizes[cut]


def test_a_split_seed_past_its_column_is_refused_before_anything_is_stored(client, org, engineer, chat_set):
    """A seed past the bigint column failed the ingest's insert: a 500, or an ingest failed for no reason
    a person could act on."""
    from training.models import DatasetIngest

    client.force_login(org["engineer"])
    for seed in (2**63, -1):
        response = client.post(
            f"/api/v1/datasets/{chat_set.pk}/versions",
            {"file": as_file(jsonl(*tickets(3))), "seed": str(seed)},
        )
        assert (
            response.status_code == 400
            and "seed: a whole number from 0" in response.json()["error"]["message"]
        )
    assert not DatasetIngest.objects.exists()

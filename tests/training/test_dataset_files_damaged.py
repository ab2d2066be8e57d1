"""A dataset version whose stored files are damaged or missing: its rows and files are refused with a 409
naming the version, and its artifact is marked corrupt, as the registry does for a model's files."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.registry.choices import Health
from tests.training.conftest import damage, jsonl, tickets, upload

pytestmark = pytest.mark.django_db


def test_rows_of_a_version_with_a_missing_blob_are_a_409_not_a_500(client, org, engineer, chat_set):
    upload(engineer, chat_set, jsonl(*tickets(20)))
    version = chat_set.versions.get(number=1)
    damage(version, "train.jsonl", None)
    client.force_login(org["viewer"])
    response = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/rows")
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "conflict"
    assert error["message"].startswith("The stored files of tickets v1 are damaged")
    assert "train.jsonl" in error["message"]
    version.artifact.refresh_from_db()
    assert version.artifact.health == Health.CORRUPT and "train.jsonl" in version.artifact.health_detail


def test_a_file_of_a_version_whose_blob_was_overwritten_is_a_409(client, org, engineer, chat_set):
    upload(engineer, chat_set, jsonl(*tickets(20)))
    version = chat_set.versions.get(number=1)
    damage(version, "eval.jsonl", b"{}\n")
    client.force_login(org["viewer"])
    response = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/files/eval.jsonl")
    assert response.status_code == 409, response.content
    assert "eval.jsonl" in response.json()["error"]["message"]
    version.artifact.refresh_from_db()
    assert version.artifact.health == Health.CORRUPT


def test_the_version_page_still_shows_why_its_rows_cannot_be_read(client, org, engineer, chat_set, team):
    """The page catches ``CorruptArtifact``: the refusal is one still, so the page renders, saying why."""
    upload(engineer, chat_set, jsonl(*tickets(20)))
    damage(chat_set.versions.get(number=1), "train.jsonl", None)
    client.force_login(org["viewer"])
    response = client.get(
        reverse("dataset-version", kwargs={"team": team.slug, "name": "tickets", "number": 1})
    )
    assert response.status_code == 200
    assert "The stored rows could not be read" in response.content.decode()

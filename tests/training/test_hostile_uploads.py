"""Uploads whose JSON spells what is not storable text fail their ingest with the line, never error, and keep
nothing."""

from __future__ import annotations

import io

import pytest

from tests.training.conftest import jsonl, work_off_ingests
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db


def as_file(content: bytes) -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = "rows.jsonl"
    return handle


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            '{"text": "refund \\ud800 please", "label": "billing"}',
            "line 2: text holds a lone UTF-16 surrogate",
        ),
        ('{"text": "refund please", "label": "bill\\u0000ing"}', "line 2: label holds a NUL character"),
    ],
)
def test_a_row_that_is_not_storable_text_fails_with_its_line_and_creates_nothing(
    client, org, labels_set, line, problem
):
    client.force_login(org["engineer"])
    content = jsonl(
        {"text": "I was charged twice", "label": "billing"}, line, {"text": "hi", "label": "other"}
    )
    response = client.post(f"/api/v1/datasets/{labels_set.pk}/versions", {"file": as_file(content)})
    assert response.status_code == 202, response.content
    work_off_ingests()
    response = client.get(f"/api/v1/datasets/{labels_set.pk}/ingests/{response.json()['id']}")
    assert response.json()["status"] == "failed", response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset" and "1 problem in 3 lines" in error["message"]
    assert error["fields"]["file"][0].startswith(problem), error["fields"]["file"]
    assert not DatasetVersion.objects.exists()

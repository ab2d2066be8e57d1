"""An export holds at most MAX_EXPORT_EVENTS events: a larger selection is refused before anything is written."""

import io
import zipfile

import pytest
from django.urls import reverse

from portfolio.accounts import services
from portfolio.audit import exports
from portfolio.audit.models import AuditEvent
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(org, department):
    """Three events: two team creations and a department's."""
    admin = actor_for(org["admin"])
    services.create_team(actor=admin, department=department, name="Search")
    services.create_team(actor=admin, department=department, name="Ranking")
    services.create_department(actor=admin, name="Finance", cost_center="CC-300")
    return org


@pytest.fixture
def at_most_two_events(monkeypatch, tmp_path):
    """The bound patched small, and the temporary folder watched for an export file."""
    monkeypatch.setattr(exports, "MAX_EXPORT_EVENTS", 2, raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return tmp_path


def _last_sequence() -> int:
    return AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0


def test_an_api_export_over_the_bound_is_refused_up_front_and_writes_nothing(
    client, history, at_most_two_events
):
    client.force_login(history["auditor"])
    before = _last_sequence()
    response = client.post("/api/v1/audit/export?format=jsonl")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "export_too_large"
    assert "more than 2 events" in error["message"] and "time range" in error["message"]
    assert _last_sequence() == before  # no audit row for an export that was never made
    assert list(at_most_two_events.iterdir()) == []  # and no zip, whole or half-written


def test_a_narrowed_api_export_within_the_bound_is_made(client, history, at_most_two_events):
    client.force_login(history["auditor"])
    response = client.post("/api/v1/audit/export?format=jsonl&action=team.")
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as archive:
        assert len(archive.read("events.jsonl").splitlines()) == 2
    assert AuditEvent.objects.filter(action="audit.export", actor_label="auditor").count() == 1


def test_a_page_export_over_the_bound_is_explained_and_writes_nothing(signed_in, history, at_most_two_events):
    before = _last_sequence()
    response = signed_in(history["auditor"]).post(reverse("audit-export"), {"format": "csv"})
    assert response.status_code == 400
    assert "more than 2 events" in response.content.decode()
    assert _last_sequence() == before
    assert list(at_most_two_events.iterdir()) == []

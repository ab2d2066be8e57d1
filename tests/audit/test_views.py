"""The audit log page: auditors only, filters that narrow the trail, exports that verify offline."""

import io
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from portfolio.accounts import services
from portfolio.accounts.models import Team
from portfolio.audit.models import AuditEvent
from portfolio.audit.offline import verify_export
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def history(org, department, other_department):
    admin = actor_for(org["admin"])
    search = services.create_team(actor=admin, department=department, name="Search")
    services.update_team(actor=admin, team=search, name="Search", description="Finds things.")
    services.create_team(actor=admin, department=other_department, name="Clauses")
    services.create_department(actor=admin, name="Finance", cost_center="CC-300")
    return org


def _text(response) -> str:
    return response.content.decode()


def _actions(response) -> list[str]:
    return [event.action for event in response.context["page"].object_list]


def test_audit_page_is_403_for_a_team_owner(signed_in, org):
    assert signed_in(org["owner"]).get(reverse("audit-log")).status_code == 403
    assert signed_in(org["owner"]).post(reverse("audit-export")).status_code == 403


def test_auditor_sees_the_newest_events_first(signed_in, history):
    response = signed_in(history["auditor"]).get(reverse("audit-log"))
    assert response.status_code == 200
    sequences = [event.sequence for event in response.context["page"].object_list]
    assert sequences == sorted(sequences, reverse=True) and len(sequences) == 4
    assert "Verifying an export offline" in _text(response) and "audit_verify_export" in _text(response)


def test_auditor_filters_by_action_prefix_and_exact_action(signed_in, history):
    client = signed_in(history["auditor"])
    assert sorted(_actions(client.get(reverse("audit-log"), {"action": "team."}))) == [
        "team.create",
        "team.create",
        "team.update",
    ]
    assert _actions(client.get(reverse("audit-log"), {"action": "team.update"})) == ["team.update"]
    assert _actions(client.get(reverse("audit-log"), {"action": "team"})) == []


def test_the_action_filter_is_a_select_of_the_vocabulary_grouped_by_object(signed_in, history):
    response = signed_in(history["auditor"]).get(reverse("audit-log"), {"action": "team.update"})
    text = _text(response)
    assert '<select name="action"' in text and '<optgroup label="team">' in text
    assert '<option value="team.">every team action</option>' in text
    assert '<option value="team.update" selected>team.update · Team changed</option>' in text
    assert '<option value="deployment.create">' in text and '<option value="training.job_failed">' in text


def test_the_action_filter_combines_with_the_other_filters(signed_in, history, department):
    client = signed_in(history["auditor"])
    search = Team.objects.get(name="Search")
    assert _actions(client.get(reverse("audit-log"), {"action": "team.", "team": search.pk})) == [
        "team.update",
        "team.create",
    ]
    both = {"action": "team.create", "department": department.pk, "actor": "admin"}
    assert _actions(client.get(reverse("audit-log"), both)) == ["team.create"]
    assert _actions(client.get(reverse("audit-log"), {"action": "department.", "team": search.pk})) == []


def test_an_action_outside_the_vocabulary_stays_chosen_in_the_select(signed_in, history):
    text = _text(signed_in(history["auditor"]).get(reverse("audit-log"), {"action": "team.rename"}))
    assert (
        '<option value="team.rename" selected>team.rename (not in today&#x27;s vocabulary)</option>' in text
    )


def test_auditor_filters_by_team_department_actor_and_object(signed_in, history, other_department):
    client = signed_in(history["auditor"])
    search = Team.objects.get(name="Search")
    assert _actions(client.get(reverse("audit-log"), {"team": search.pk})) == ["team.update", "team.create"]
    assert _actions(client.get(reverse("audit-log"), {"department": other_department.pk})) == ["team.create"]
    assert len(_actions(client.get(reverse("audit-log"), {"actor": "admin"}))) == 4
    assert _actions(client.get(reverse("audit-log"), {"actor": "nobody"})) == []
    by_object = client.get(
        reverse("audit-log"), {"object_type": "accounts.team", "object_id": str(search.pk)}
    )
    assert _actions(by_object) == ["team.update", "team.create"]


def test_auditor_filters_by_time(signed_in, history):
    client = signed_in(history["auditor"])
    assert len(_actions(client.get(reverse("audit-log"), {"since": "2000-01-01T00:00"}))) == 4
    assert _actions(client.get(reverse("audit-log"), {"until": "2000-01-01T00:00"})) == []
    refused = client.get(reverse("audit-log"), {"since": "2030-01-02T00:00", "until": "2030-01-01T00:00"})
    assert refused.context["page"] is None and "Must be after the start" in _text(refused)


def test_invalid_filters_are_explained_not_crashed_on(signed_in, history):
    response = signed_in(history["auditor"]).get(reverse("audit-log"), {"since": "yesterday", "team": "x"})
    assert response.status_code == 200
    assert response.context["page"] is None and "Correct the filters" in _text(response)


def test_htmx_filtering_returns_only_the_results_fragment(signed_in, history):
    response = signed_in(history["auditor"]).get(reverse("audit-log"), {"action": "department."}, **HTMX)
    text = _text(response)
    assert response.status_code == 200
    assert text.lstrip().startswith('<section id="audit-results"') and "<html" not in text
    assert "department.create" in text and "team.create" not in text
    assert "HX-Request" in response["Vary"]


def test_a_history_restore_gets_the_whole_page(signed_in, history):
    response = signed_in(history["auditor"]).get(
        reverse("audit-log"), **HTMX, HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    assert "<html" in _text(response)


def test_events_show_their_before_and_after_json(signed_in, history):
    text = _text(signed_in(history["auditor"]).get(reverse("audit-log"), {"action": "team.update"}))
    assert "Finds things." in text and "description" in text
    assert 'class="event-detail" hidden' in text


def test_the_log_is_paginated_by_fifty(signed_in, org, department):
    admin = actor_for(org["admin"])
    for n in range(55):
        services.create_team(actor=admin, department=department, name=f"Team {n}")
    client = signed_in(org["auditor"])
    first = client.get(reverse("audit-log"), {"action": "team.create"})
    assert len(first.context["page"].object_list) == 50 and "Page 1 of 2" in _text(first)
    second = client.get(reverse("audit-log"), {"action": "team.create", "page": 2})
    assert len(second.context["page"].object_list) == 5


def test_export_buttons_carry_the_filters_and_are_shown_to_exporters(signed_in, history):
    text = _text(signed_in(history["auditor"]).get(reverse("audit-log"), {"action": "team.", "page": 1}))
    form = re.search(r'<form method="post" action="/audit/export/".*?</form>', text, re.S).group(0)
    assert 'name="csrfmiddlewaretoken"' in form
    assert '<input type="hidden" name="action" value="team.">' in form and 'name="page"' not in form
    assert 'name="format" value="jsonl"' in form and 'name="format" value="csv"' in form


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_downloaded_from_the_page_verifies_offline(signed_in, history, tmp_path, fmt):
    response = signed_in(history["auditor"]).post(reverse("audit-export"), {"format": fmt, "action": "team."})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment; filename=")
    path = Path(tmp_path / "export.zip")
    path.write_bytes(b"".join(response.streaming_content))
    verdict = verify_export(path, [settings.AUDIT_SIGNING_KEY.public_key()])
    assert verdict.ok, verdict.problems
    assert verdict.count == 3
    assert AuditEvent.objects.filter(action="audit.export", actor_label="auditor").exists()


def test_an_export_leaves_no_temporary_file_behind(signed_in, history, monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    response = signed_in(history["auditor"]).post(reverse("audit-export"), {"format": "csv"})
    io.BytesIO(b"".join(response.streaming_content))
    response.close()
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_export_format_is_a_400(signed_in, history):
    response = signed_in(history["auditor"]).post(reverse("audit-export"), {"format": "xml"})
    assert response.status_code == 400
    assert "choose one of" in _text(response)


def test_an_export_is_a_post_with_the_csrf_token_so_no_other_site_can_start_one(history):
    # A link or redirect from another site (a GET carrying the Lax session cookie), or its form (a POST
    # without the token), would otherwise export in the auditor's name: a false audit row and a zip built.
    client = Client(enforce_csrf_checks=True)
    client.force_login(history["auditor"])
    last = AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0
    assert client.get(reverse("audit-export"), {"format": "csv"}).status_code == 405
    assert client.post(reverse("audit-export"), {"format": "csv"}).status_code == 403
    assert not AuditEvent.objects.filter(sequence__gt=last).exists()

    page = _text(client.get(reverse("audit-log")))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(reverse("audit-export"), {"format": "csv", "csrfmiddlewaretoken": token})
    assert response.status_code == 200 and b"".join(response.streaming_content)[:2] == b"PK"
    assert list(AuditEvent.objects.filter(sequence__gt=last).values_list("action", flat=True)) == [
        "audit.export"
    ]

"""The REST API: one error shape, paginated ordered lists, the same gate as everything else."""

import pytest
from django.urls import reverse

from portfolio.accounts.models import Team
from portfolio.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_anonymous_calls_get_401_in_the_error_shape(client):
    response = client.get("/api/v1/teams")
    assert response.status_code == 401
    body = response.json()["error"]
    assert body["code"] == "unauthenticated" and body["request_id"] == response["X-Request-ID"]


def test_team_lists_are_paginated_and_show_only_visible_teams(signed_in, org, team):
    response = signed_in(org["viewer"]).get("/api/v1/teams")
    assert response.status_code == 200
    assert response.json() == {"items": [response.json()["items"][0]], "count": 1}
    assert response.json()["items"][0]["slug"] == team.slug


def test_another_teams_object_is_404_not_403(signed_in, org, other_team):
    response = signed_in(org["owner"]).get(f"/api/v1/teams/{other_team.pk}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "Contracts" not in response.content.decode()


def test_a_viewer_changing_the_team_gets_403(signed_in, org, team):
    response = signed_in(org["viewer"]).patch(
        f"/api/v1/teams/{team.pk}", {"name": "Renamed"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_the_session_api_needs_a_csrf_token_for_changes(org, team):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(org["owner"])
    response = client.patch(f"/api/v1/teams/{team.pk}", {"name": "X"}, content_type="application/json")
    assert response.status_code in (401, 403)
    assert Team.objects.get(pk=team.pk).name == team.name


def test_validation_errors_name_the_field(signed_in, org):
    response = signed_in(org["admin"]).post(
        "/api/v1/departments", {"name": ""}, content_type="application/json"
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid" and "cost_center" in error["fields"]


def test_admin_creates_a_team_through_the_api_and_it_is_audited(signed_in, org, department):
    response = signed_in(org["admin"]).post(
        "/api/v1/teams", {"department_id": department.pk, "name": "Voice"}, content_type="application/json"
    )
    assert response.status_code == 201
    assert AuditEvent.objects.filter(action="team.create", object_id=str(response.json()["id"])).exists()


def test_the_answer_with_an_initial_password_is_kept_by_no_cache(signed_in, org):
    response = signed_in(org["admin"]).post(
        "/api/v1/users", {"username": "newcomer"}, content_type="application/json"
    )
    assert response.status_code == 201 and response.json()["initial_password"]
    assert "no-store" in response["Cache-Control"]


def test_owner_adds_a_member_by_username(signed_in, org, team, make_user):
    make_user("erin")
    response = signed_in(org["owner"]).post(
        f"/api/v1/teams/{team.pk}/members",
        {"username": "erin", "role": "developer"},
        content_type="application/json",
    )
    assert response.status_code == 201 and response.json()["username"] == "erin"


def test_audit_events_are_for_auditors_only(signed_in, org, team):
    assert signed_in(org["owner"]).get("/api/v1/audit/events").status_code == 403
    response = signed_in(org["auditor"]).get("/api/v1/audit/events?action=team.")
    assert response.status_code == 200 and "items" in response.json()


def test_the_api_export_downloads_a_zip(signed_in, org):
    response = signed_in(org["auditor"]).post("/api/v1/audit/export?format=csv")
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    assert b"".join(response.streaming_content)[:2] == b"PK"


def test_the_api_export_is_a_post_the_session_sends_with_its_csrf_token(org):
    # A GET would let any site's link export in the signed-in auditor's name (the Lax cookie goes along).
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(org["auditor"])
    last = AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0
    assert client.get("/api/v1/audit/export?format=csv").status_code == 405
    assert client.post("/api/v1/audit/export?format=csv").status_code == 403
    assert not AuditEvent.objects.filter(sequence__gt=last).exists()
    client.get(reverse("audit-log"))  # a page sets the csrftoken cookie
    response = client.post(
        "/api/v1/audit/export?format=csv", HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value
    )
    assert response.status_code == 200 and b"".join(response.streaming_content)[:2] == b"PK"
    assert list(AuditEvent.objects.filter(sequence__gt=last).values_list("action", flat=True)) == [
        "audit.export"
    ]


def test_openapi_docs_are_served(client):
    assert client.get("/api/docs").status_code == 302
    assert client.get("/api/v1/openapi.json").status_code == 200

"""The mapping rules' page and REST API: auditors read, platform admins add and remove, everyone else is
refused; each change is audited; sso rows elsewhere show where they come from and refuse local edits."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.accounts.models import DepartmentRole, Membership, OrgRoleGrant, SsoMappingRule
from portfolio.accounts.sso import mapping
from portfolio.audit.models import AuditEvent

pytestmark = pytest.mark.django_db
API = "/api/v1/sso/mappings"


@pytest.fixture
def acme(settings):
    settings.OIDC = {
        "server_url": "http://idp.invalid/",
        "realm": "r",
        "client_id": "portfolio",
        "organisation": "Acme",
    }


def post(client, data):
    return client.post(API, data, content_type="application/json")


def test_admins_add_list_and_remove_rules_through_the_api_audited(client, org, team):
    client.force_login(org["admin"])
    response = post(
        client,
        {"kind": "group", "value": "customer-ops/support-ai", "team_id": team.pk, "team_role": "engineer"},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (
        body["value"] == "/customer-ops/support-ai"
        and body["team_role"] == "engineer"
        and body["org_role"] is None
    )
    assert (
        post(client, {"kind": "realm_role", "value": "portfolio-admin", "org_role": "admin"}).status_code
        == 201
    )

    listed = client.get(API).json()
    assert listed["count"] == 2 and [item["kind"] for item in listed["items"]] == ["group", "realm_role"]

    assert client.delete(f"{API}/{body['id']}").status_code == 204
    assert client.delete(f"{API}/{body['id']}").json()["error"]["code"] == "not_found"
    assert [
        e.action for e in AuditEvent.objects.filter(action__startswith="sso_mapping").order_by("sequence")
    ] == [
        "sso_mapping.create",
        "sso_mapping.create",
        "sso_mapping.delete",
    ]


def test_the_api_refuses_a_rule_without_one_target_in_the_error_shape(client, org, team):
    client.force_login(org["admin"])
    response = post(
        client,
        {"kind": "group", "value": "/ops", "org_role": "admin", "team_id": team.pk, "team_role": "viewer"},
    )
    assert response.status_code == 400
    assert (
        response.json()["error"]["code"] == "invalid"
        and "exactly one target" in response.json()["error"]["message"]
    )
    response = post(client, {"kind": "group", "value": "/ops", "team_id": 999999, "team_role": "viewer"})
    assert response.status_code == 400 and response.json()["error"]["fields"] == {"team_id": ["Not found."]}
    assert post(client, {"kind": "group", "value": "/ops", "org_role": "admin"}).status_code == 201
    conflict = post(client, {"kind": "group", "value": "ops", "org_role": "admin"})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"
    assert SsoMappingRule.objects.count() == 1


def test_auditors_read_the_rules_and_nobody_else_changes_them(client, org):
    rule = SsoMappingRule.objects.create(kind="group", value="/ops", org_role="auditor")
    client.force_login(org["auditor"])
    assert client.get(API).status_code == 200
    assert "/ops" in client.get(reverse("sso-mapping-list")).text
    assert post(client, {"kind": "group", "value": "/x", "org_role": "admin"}).status_code == 403
    assert client.delete(f"{API}/{rule.pk}").status_code == 403
    assert client.post(reverse("sso-mapping-delete", args=[rule.pk])).status_code == 403
    client.force_login(org["owner"])
    assert client.get(API).status_code == 403 and client.get(reverse("sso-mapping-list")).status_code == 403
    assert SsoMappingRule.objects.filter(pk=rule.pk).exists()
    assert not AuditEvent.objects.filter(action__startswith="sso_mapping").exists()


def test_the_page_adds_and_removes_rules_with_htmx(client, org, team, acme):
    client.force_login(org["admin"])
    page = client.get(reverse("sso-mapping-list")).text
    assert "Which Acme groups and roles" in page and "No rules yet" in page
    response = client.post(
        reverse("sso-mapping-add"),
        {"kind": "group", "value": "/customer-ops/support-ai", "team": team.pk, "team_role": "engineer"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200 and 'id="sso-mappings"' in response.text
    assert "Rule added" in response.text and "<html" not in response.text
    rule = SsoMappingRule.objects.get()
    refused = client.post(
        reverse("sso-mapping-add"),
        {"kind": "group", "value": "/x", "org_role": "admin", "team": team.pk, "team_role": "viewer"},
        HTTP_HX_REQUEST="true",
    )
    assert "Choose exactly one target" in refused.text and SsoMappingRule.objects.count() == 1
    response = client.post(reverse("sso-mapping-delete", args=[rule.pk]), HTTP_HX_REQUEST="true")
    assert "Rule removed" in response.text and not SsoMappingRule.objects.exists()
    assert AuditEvent.objects.filter(action__startswith="sso_mapping").count() == 2


def test_roles_from_single_sign_on_are_shown_and_kept_on_the_users_page(client, org, team, department, acme):
    person = org["viewer"]
    SsoMappingRule.objects.create(kind="group", value="/support", org_role="auditor")
    SsoMappingRule.objects.create(
        kind="group", value="/support", department=department, department_role="manager"
    )
    mapping.apply(person, {"groups": ["/support"]}, actor=mapping.system_actor(), client_id="portfolio")
    client.force_login(org["admin"])
    page = client.get(reverse("user-detail", args=[person.pk])).text
    assert "from Acme single sign-on" in page
    assert 'value="auditor"' not in page  # not offered for editing

    # Saving the roles form (here: adding admin) keeps the role single sign-on gives.
    response = client.post(reverse("user-roles", args=[person.pk]), {"roles": ["admin"]})
    assert response.status_code == 302
    assert {(g.role, g.source) for g in OrgRoleGrant.objects.filter(user=person)} == {
        ("auditor", "sso"),
        ("admin", "local"),
    }

    # The API refuses to take it away, saying why.
    response = client.put(
        f"/api/v1/users/{person.pk}/org-roles", {"roles": []}, content_type="application/json"
    )
    assert response.status_code == 409 and "Acme single sign-on" in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "sso_managed"

    # The department page shows the manager without a remove button; a forged remove is refused.
    page = client.get(reverse("department-detail", args=[department.pk])).text
    assert "from Acme single sign-on" in page
    assert reverse("department-manager-remove", args=[department.pk, person.pk]) not in page
    response = client.post(
        reverse("department-manager-remove", args=[department.pk, person.pk]), HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and "comes from Acme single sign-on" in response.text
    assert DepartmentRole.objects.filter(user=person, source="sso").exists()


def test_the_api_says_which_memberships_come_from_single_sign_on(client, org, team):
    SsoMappingRule.objects.create(kind="group", value="/support", team=team, team_role="viewer")
    newcomer = org["outsider"]
    mapping.apply(newcomer, {"groups": ["/support"]}, actor=mapping.system_actor(), client_id="portfolio")
    client.force_login(org["owner"])
    members = {
        m["username"]: m["source"] for m in client.get(f"/api/v1/teams/{team.pk}/members").json()["items"]
    }
    assert members["outsider"] == "sso" and members["viewer"] == "local"
    membership = Membership.objects.get(user=newcomer, team=team)
    response = client.delete(f"/api/v1/memberships/{membership.pk}")
    assert response.status_code == 409 and response.json()["error"]["code"] == "sso_managed"

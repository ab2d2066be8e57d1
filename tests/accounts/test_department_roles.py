"""Department managers: granted and taken back by platform admins only, each change audited, and shown
(with its controls for admins) on the department page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.accounts import services
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import DepartmentRole
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def manager(make_user):
    return make_user("maria")


def test_an_admin_grants_a_department_manager_and_it_is_audited(org, department, manager):
    grant = services.grant_department_role(actor=actor_for(org["admin"]), user=manager, department=department)
    assert grant.role == "manager"
    event = AuditEvent.objects.get(action="department_role.grant")
    assert event.after == {"user": "maria", "department": "CC-100", "role": "manager"}
    assert event.department_id == department.pk and event.actor_label == "admin"
    assert Actor(user=manager).managed_department_ids == {department.pk}


def test_an_admin_revokes_it_and_that_is_audited_too(org, department, manager):
    admin = actor_for(org["admin"])
    services.grant_department_role(actor=admin, user=manager, department=department)
    services.revoke_department_role(actor=admin, user=manager, department=department)
    assert not DepartmentRole.objects.exists()
    event = AuditEvent.objects.get(action="department_role.revoke")
    assert event.before == {"user": "maria", "department": "CC-100", "role": "manager"}


def test_revoking_a_role_not_held_changes_nothing_and_records_nothing(org, department, manager):
    services.revoke_department_role(actor=actor_for(org["admin"]), user=manager, department=department)
    assert not AuditEvent.objects.filter(action="department_role.revoke").exists()


def test_a_second_grant_is_a_conflict(org, department, manager):
    admin = actor_for(org["admin"])
    services.grant_department_role(actor=admin, user=manager, department=department)
    with pytest.raises(Conflict):
        services.grant_department_role(actor=admin, user=manager, department=department)
    assert AuditEvent.objects.filter(action="department_role.grant").count() == 1


def test_an_unknown_role_or_a_deactivated_user_is_refused(org, department, manager):
    admin = actor_for(org["admin"])
    with pytest.raises(Invalid):
        services.grant_department_role(actor=admin, user=manager, department=department, role="king")
    manager.is_active = False
    manager.save()
    with pytest.raises(Invalid):
        services.grant_department_role(actor=admin, user=manager, department=department)
    assert not DepartmentRole.objects.exists()


@pytest.mark.parametrize("role", ["owner", "auditor"])
def test_only_platform_admins_grant_department_roles(org, department, manager, role):
    with pytest.raises(Forbidden):
        services.grant_department_role(actor=actor_for(org[role]), user=manager, department=department)
    assert not DepartmentRole.objects.exists() and not AuditEvent.objects.exists()


def test_a_manager_cannot_grant_in_their_own_department(org, department, manager, make_user):
    services.grant_department_role(actor=actor_for(org["admin"]), user=manager, department=department)
    with pytest.raises((Forbidden, NotFound)):
        services.grant_department_role(actor=Actor(user=manager), user=make_user("x"), department=department)


def test_an_outsider_does_not_see_the_department_to_grant_in(org, department, manager):
    with pytest.raises(NotFound):
        services.grant_department_role(actor=actor_for(org["outsider"]), user=manager, department=department)


# --- REST -------------------------------------------------------------------------------------------
def test_the_api_grants_lists_and_revokes_managers(client, org, department, manager):
    client.force_login(org["admin"])
    url = f"/api/v1/departments/{department.pk}/roles"
    response = client.post(url, {"username": "maria"}, content_type="application/json")
    assert response.status_code == 201 and response.json()["username"] == "maria"
    assert client.get(url).json()["items"][0]["role"] == "manager"
    assert client.delete(f"{url}/{manager.pk}").status_code == 204
    assert client.get(url).json() == {"items": [], "count": 0}
    assert client.delete(f"{url}/{manager.pk}").status_code == 404


def test_the_api_refuses_an_unknown_user_and_role(client, org, department):
    client.force_login(org["admin"])
    url = f"/api/v1/departments/{department.pk}/roles"
    response = client.post(url, {"username": "ghost"}, content_type="application/json")
    assert response.status_code == 400 and "username" in response.json()["error"]["fields"]
    response = client.post(url, {"username": "owner", "role": "king"}, content_type="application/json")
    assert response.status_code == 422
    assert not DepartmentRole.objects.exists()


# --- The department page ----------------------------------------------------------------------------
def test_the_department_page_lists_managers_and_offers_admins_the_controls(client, org, department, manager):
    DepartmentRole.objects.create(user=manager, department=department)
    client.force_login(org["owner"])
    page = client.get(reverse("department-detail", args=[department.pk])).content.decode()
    assert "maria" in page and reverse("department-manager-add", args=[department.pk]) not in page
    client.force_login(org["admin"])
    page = client.get(reverse("department-detail", args=[department.pk])).content.decode()
    assert reverse("department-manager-add", args=[department.pk]) in page
    assert reverse("department-manager-remove", args=[department.pk, manager.pk]) in page


def test_an_admin_adds_and_removes_a_manager_with_htmx(client, org, department, manager):
    client.force_login(org["admin"])
    response = client.post(
        reverse("department-manager-add", args=[department.pk]), {"username": "maria"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert 'id="managers"' in response.content.decode() and "maria now manages" in response.content.decode()
    assert DepartmentRole.objects.filter(user=manager, department=department).exists()
    response = client.post(
        reverse("department-manager-remove", args=[department.pk, manager.pk]), HTTP_HX_REQUEST="true"
    )
    assert "no longer manages" in response.content.decode()
    assert not DepartmentRole.objects.exists()
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True)) == [
        "department_role.grant",
        "department_role.revoke",
    ]


def test_an_unknown_user_comes_back_as_a_form_error(client, org, department):
    client.force_login(org["admin"])
    response = client.post(
        reverse("department-manager-add", args=[department.pk]), {"username": "ghost"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and "No active user with that name." in response.content.decode()
    without_htmx = client.post(reverse("department-manager-add", args=[department.pk]), {"username": "ghost"})
    assert without_htmx.status_code == 302
    assert not DepartmentRole.objects.exists()


def test_members_may_not_add_managers(client, org, department, manager):
    client.force_login(org["owner"])
    url = reverse("department-manager-add", args=[department.pk])
    assert client.post(url, {"username": "maria"}).status_code == 403
    client.force_login(org["outsider"])
    assert client.post(url, {"username": "maria"}).status_code == 404
    assert not DepartmentRole.objects.exists()


def test_a_department_manager_sees_the_department_and_its_teams_but_not_others(
    make_user, department, team, other_team
):
    """A regression: managers who belong to none of the department's teams were answered 404 on it."""
    from portfolio.accounts import gate
    from portfolio.accounts.models import Department, DepartmentRole, Team
    from tests.conftest import actor_for

    manager = make_user("manager-only")
    DepartmentRole.objects.create(user=manager, department=department)
    actor = actor_for(manager)
    assert list(gate.visible(actor, Department)) == [department]
    assert list(gate.visible(actor, Team)) == [team]
    assert other_team not in gate.visible(actor, Team)

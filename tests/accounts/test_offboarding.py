"""Offboarding: platform admins deactivate and reactivate accounts and change organisation roles, in the UI
and the API, each audited with before and after. A deactivated account is out at once: no sign-in, no
session, no personal token; its memberships stay for the record."""

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from portfolio.accounts import personal_tokens, services
from portfolio.accounts.choices import OrgRole
from portfolio.accounts.models import Membership, OrgRoleGrant, PersonalToken
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden
from tests.conftest import PASSWORD, actor_for

pytestmark = pytest.mark.django_db


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _bearer(plaintext: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


@pytest.fixture
def leaver(org):
    """The developer, signed in on two browsers and with a personal token for scripts."""
    laptop, phone = _signed_in(org["developer"]), _signed_in(org["developer"])
    _, plaintext = personal_tokens.create_personal_token(
        actor=actor_for(org["developer"]), name="ci", expires_in_days=30
    )
    assert laptop.get("/api/v1/me").status_code == 200
    assert Client().get("/api/v1/me", **_bearer(plaintext)).status_code == 200
    return {"user": org["developer"], "browsers": [laptop, phone], "token": plaintext}


def _sessions_of(user) -> int:
    return sum(1 for s in Session.objects.all() if s.get_decoded().get("_auth_user_id") == str(user.pk))


def test_a_deactivated_user_is_out_at_once_and_keeps_their_memberships(client, org, team, leaver):
    client.force_login(org["admin"])
    user = leaver["user"]
    assert _sessions_of(user) == 2
    response = client.post(f"/api/v1/users/{user.pk}/deactivate")
    assert response.status_code == 200, response.content
    assert response.json()["is_active"] is False
    assert response.json()["memberships"] == [
        {"team_id": team.pk, "team": team.slug, "role": "developer", "source": "local"}
    ]

    # Sessions ended, token revoked, sign-in refused: at once.
    assert _sessions_of(user) == 0
    for browser in leaver["browsers"]:
        assert browser.get("/api/v1/me").status_code == 401
        assert browser.get("/teams/")["Location"] == "/login/?next=/teams/"
    assert Client().get("/api/v1/me", **_bearer(leaver["token"])).status_code == 401
    assert not PersonalToken.objects.active().filter(user=user).exists()
    login = Client().post(reverse("login"), {"username": user.username, "password": PASSWORD})
    assert login.status_code == 200 and "_auth_user_id" not in login.client.session

    # Kept for the record, and marked on the team's page.
    assert Membership.objects.filter(user=user, team=team, role="developer").exists()
    team_page = _signed_in(org["owner"]).get(reverse("team-detail", args=[team.slug])).content.decode()
    assert 'title="Kept for the record; has no access">deactivated</span>' in team_page
    event = AuditEvent.objects.get(action="user.deactivate")
    assert event.before["is_active"] is True and event.after["is_active"] is False
    assert event.after["sessions_ended"] == 2 and len(event.after["tokens_revoked"]) == 1
    assert leaver["token"].split("_", 2)[2] not in str(event.after)
    assert event.actor_label == "admin" and event.object_id == str(user.pk)


def test_reactivation_lets_the_user_sign_in_again_but_not_with_the_old_token(client, org, leaver):
    admin = actor_for(org["admin"])
    services.deactivate_user(actor=admin, user=leaver["user"])
    client.force_login(org["admin"])
    response = client.post(f"/api/v1/users/{leaver['user'].pk}/reactivate")
    assert response.status_code == 200 and response.json()["is_active"] is True
    login = Client().post(reverse("login"), {"username": "developer", "password": PASSWORD})
    assert login.status_code == 302
    assert Client().get("/api/v1/me", **_bearer(leaver["token"])).status_code == 401
    event = AuditEvent.objects.get(action="user.reactivate")
    assert (event.before["is_active"], event.after["is_active"]) == (False, True)


@pytest.mark.parametrize("who", ["auditor", "owner", "outsider"])
def test_only_platform_admins_offboard_or_change_org_roles(client, org, who):
    target = org["viewer"]
    client.force_login(org[who])
    assert client.post(f"/api/v1/users/{target.pk}/deactivate").status_code == 403
    assert client.post(f"/api/v1/users/{target.pk}/reactivate").status_code == 403
    roles = client.put(
        f"/api/v1/users/{target.pk}/org-roles", {"roles": ["admin"]}, content_type="application/json"
    )
    assert roles.status_code == 403
    assert client.post(reverse("user-deactivate", args=[target.pk])).status_code == 403
    assert client.post(reverse("user-roles", args=[target.pk]), {"roles": ["admin"]}).status_code == 403
    target.refresh_from_db()
    assert target.is_active and not OrgRoleGrant.objects.filter(user=target).exists()
    with pytest.raises(Forbidden):
        services.deactivate_user(actor=actor_for(org[who]), user=target)


def test_an_auditor_reads_a_user_but_a_member_does_not(client, org, team):
    client.force_login(org["auditor"])
    response = client.get(f"/api/v1/users/{org['owner'].pk}")
    assert response.status_code == 200 and response.json()["memberships"][0]["team_id"] == team.pk
    page = client.get(reverse("user-detail", args=[org["owner"].pk]))
    assert page.status_code == 200
    assert reverse("user-deactivate", args=[org["owner"].pk]) not in page.content.decode()
    client.force_login(org["owner"])
    assert client.get(f"/api/v1/users/{org['viewer'].pk}").status_code == 403
    assert client.get(reverse("user-detail", args=[org["viewer"].pk])).status_code == 403


def test_admins_change_org_roles_through_the_api_each_change_audited(client, org):
    client.force_login(org["admin"])
    target = org["engineer"]
    response = client.put(
        f"/api/v1/users/{target.pk}/org-roles", {"roles": ["auditor"]}, content_type="application/json"
    )
    assert response.status_code == 200 and response.json()["org_roles"] == ["auditor"]
    response = client.put(
        f"/api/v1/users/{target.pk}/org-roles", {"roles": ["admin"]}, content_type="application/json"
    )
    assert response.json()["org_roles"] == ["admin"]
    events = [
        (e.action, e.before["org_roles"], e.after["org_roles"])
        for e in AuditEvent.objects.filter(action__startswith="org_role.").order_by("sequence")
    ]
    assert events == [
        ("org_role.grant", [], ["auditor"]),
        ("org_role.grant", ["auditor"], ["admin", "auditor"]),
        ("org_role.revoke", ["admin", "auditor"], ["admin"]),
    ]
    bad = client.put(
        f"/api/v1/users/{target.pk}/org-roles", {"roles": ["owner"]}, content_type="application/json"
    )
    assert bad.status_code == 422


def test_admins_change_org_roles_and_deactivate_in_the_ui(client, org):
    client.force_login(org["admin"])
    target = org["viewer"]
    page = client.get(reverse("user-detail", args=[target.pk]))
    assert page.status_code == 200
    assert reverse("user-deactivate", args=[target.pk]) in page.content.decode()
    response = client.post(reverse("user-roles", args=[target.pk]), {"roles": ["auditor"]}, follow=True)
    assert "Organisation roles of viewer saved." in response.content.decode()
    assert list(OrgRoleGrant.objects.filter(user=target).values_list("role", flat=True)) == ["auditor"]
    response = client.post(reverse("user-deactivate", args=[target.pk]), follow=True)
    assert "viewer is deactivated" in response.content.decode()
    target.refresh_from_db()
    assert not target.is_active
    assert reverse("user-reactivate", args=[target.pk]) in response.content.decode()
    client.post(reverse("user-reactivate", args=[target.pk]))
    target.refresh_from_db()
    assert target.is_active
    assert [e.action for e in AuditEvent.objects.order_by("sequence")][-3:] == [
        "org_role.grant",
        "user.deactivate",
        "user.reactivate",
    ]


def test_the_user_list_links_each_user_to_their_page(client, org):
    client.force_login(org["auditor"])
    page = client.get(reverse("user-list")).content.decode()
    assert reverse("user-detail", args=[org["viewer"].pk]) in page


def test_an_admin_cannot_deactivate_themselves(client, org):
    client.force_login(org["admin"])
    response = client.post(f"/api/v1/users/{org['admin'].pk}/deactivate")
    assert response.status_code == 409
    org["admin"].refresh_from_db()
    assert org["admin"].is_active


def test_the_organisation_keeps_one_active_admin(org, make_user, system_actor):
    ops = make_user("ops", org_role=OrgRole.ADMIN)
    # The superuser leaves; ops is the last active admin and can neither step down nor be removed.
    services.deactivate_user(actor=actor_for(ops), user=org["admin"])
    with pytest.raises(Conflict, match="at least one active platform admin"):
        services.set_org_roles(actor=actor_for(ops), user=ops, roles=[])
    with pytest.raises(Conflict, match="at least one active platform admin"):
        services.deactivate_user(actor=system_actor, user=ops)  # a system task other than the directory
    assert OrgRoleGrant.objects.filter(user=ops, role=OrgRole.ADMIN).exists()
    # With a second admin, stepping down is fine.
    services.set_org_roles(actor=actor_for(ops), user=org["auditor"], roles=[OrgRole.ADMIN])
    services.set_org_roles(actor=actor_for(ops), user=ops, roles=[])
    assert not OrgRoleGrant.objects.filter(user=ops).exists()


def test_a_failed_audit_write_leaves_the_user_active_with_sessions_and_tokens(org, leaver, monkeypatch):
    from portfolio.audit import services as audit

    def broken(*args, **kwargs):
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(RuntimeError):
        services.deactivate_user(actor=actor_for(org["admin"]), user=leaver["user"])
    leaver["user"].refresh_from_db()
    assert leaver["user"].is_active
    assert _sessions_of(leaver["user"]) == 2
    assert PersonalToken.objects.active().filter(user=leaver["user"]).count() == 1


def test_deactivating_a_teams_last_active_owner_says_so_and_records_it(client, org, team):
    """Offboarding is never refused for it, but the admin is told which teams need an owner named."""
    owner = org["owner"]
    assert list(Membership.objects.filter(team=team, role="owner").values_list("user", flat=True)) == [
        owner.pk
    ]
    client.force_login(org["admin"])
    response = client.post(reverse("user-deactivate", args=[owner.pk]), follow=True)
    page = response.content.decode()
    assert "owner is deactivated" in page
    assert f"{team.name} now has no active owner" in page
    event = AuditEvent.objects.get(action="user.deactivate")
    assert event.after["teams_left_without_an_active_owner"] == [team.slug]


def test_a_team_with_another_active_owner_is_not_named(org, team, make_user):
    second = make_user("second-owner")
    services.add_member(actor=actor_for(org["owner"]), team=team, user=second, role="owner")
    services.deactivate_user(actor=actor_for(org["admin"]), user=org["owner"])
    assert AuditEvent.objects.get(action="user.deactivate").after["teams_left_without_an_active_owner"] == []
    services.deactivate_user(actor=actor_for(org["admin"]), user=second)
    assert services.teams_without_active_owner(second) == [team]

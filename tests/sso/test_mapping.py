"""Single sign-on mapping rules: what they accept, what ``desired`` reads from claims, and how ``apply``
makes a person's single sign-on memberships and roles what the rules give, audited, leaving local ones be."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from portfolio.accounts import services
from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import GrantSource
from portfolio.accounts.models import DepartmentRole, Membership, OrgRoleGrant, SsoMappingRule
from portfolio.accounts.sso import mapping, rules
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Invalid
from tests.conftest import actor_for
from tests.interleave import Pause, interleave

pytestmark = pytest.mark.django_db
CLIENT = "portfolio"
KEYCLOAK = Actor.for_system("keycloak")


def claims(groups=(), realm_roles=(), client_roles=(), client=CLIENT) -> dict:
    """Claims shaped as Keycloak's tokens carry them (and as a directory sync builds them)."""
    return {
        "groups": list(groups),
        "realm_access": {"roles": list(realm_roles)},
        "resource_access": {client: {"roles": list(client_roles)}},
    }


@pytest.fixture
def admin(make_user):
    return actor_for(make_user("root", org_role="admin"))


@pytest.fixture
def person(make_user):
    return make_user("alice")


def rows(user) -> dict:
    return {
        "teams": {(m.team.slug, m.role, m.source) for m in Membership.objects.filter(user=user)},
        "org": {(g.role, g.source) for g in OrgRoleGrant.objects.filter(user=user)},
        "departments": {
            (g.department.cost_center, g.role, g.source) for g in DepartmentRole.objects.filter(user=user)
        },
    }


# --- Rules -----------------------------------------------------------------------------------------
def test_a_rule_needs_exactly_one_target(admin, team, department):
    with pytest.raises(Invalid, match="exactly one target"):
        rules.create_rule(actor=admin, kind="group", value="/ops")
    with pytest.raises(Invalid, match="exactly one target"):
        rules.create_rule(
            actor=admin, kind="group", value="/ops", team=team, team_role="viewer", org_role="admin"
        )
    with pytest.raises(Invalid, match="exactly one target"):
        rules.create_rule(actor=admin, kind="group", value="/ops", org_role="auditor", department=department)
    with pytest.raises(Invalid, match="team_role"):
        rules.create_rule(actor=admin, kind="group", value="/ops", team=team)
    with pytest.raises(Invalid, match="kind"):
        rules.create_rule(actor=admin, kind="user", value="alice", org_role="admin")
    with pytest.raises(Invalid, match="value"):
        rules.create_rule(actor=admin, kind="group", value=" / ", org_role="admin")
    assert (
        not SsoMappingRule.objects.exists()
        and not AuditEvent.objects.filter(action__startswith="sso").exists()
    )


def test_the_database_refuses_a_rule_with_two_targets_or_none(team):
    with pytest.raises(IntegrityError), transaction.atomic():
        SsoMappingRule.objects.create(
            kind="group", value="/ops", team=team, team_role="viewer", org_role="admin"
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        SsoMappingRule.objects.create(kind="group", value="/ops")
    with pytest.raises(IntegrityError), transaction.atomic():
        SsoMappingRule.objects.create(kind="group", value="/ops", team=team)  # a team without a role


def test_a_group_is_stored_with_its_leading_slash_and_a_rule_is_made_once(admin, team):
    rule = rules.create_rule(
        actor=admin, kind="group", value="customer-ops/support-ai ", team=team, team_role="engineer"
    )
    assert rule.value == "/customer-ops/support-ai"
    with pytest.raises(Conflict, match="already maps group /customer-ops/support-ai to this team"):
        # Another role for the same team from the same group would leave the role to chance.
        rules.create_rule(
            actor=admin, kind="group", value="/customer-ops/support-ai", team=team, team_role="owner"
        )
    rules.create_rule(actor=admin, kind="realm_role", value="portfolio-admin", org_role="admin")
    with pytest.raises(Conflict):
        rules.create_rule(actor=admin, kind="realm_role", value="portfolio-admin", org_role="admin")
    created = AuditEvent.objects.filter(action="sso_mapping.create").order_by("sequence")
    assert [event.after for event in created] == [
        {
            "kind": "group",
            "value": "/customer-ops/support-ai",
            "team": "support-ai",
            "team_role": "engineer",
            "org_role": None,
            "department": None,
            "department_role": None,
        },
        {
            "kind": "realm_role",
            "value": "portfolio-admin",
            "team": None,
            "team_role": None,
            "org_role": "admin",
            "department": None,
            "department_role": None,
        },
    ]
    assert created[0].actor_label == "root" and created[0].team_id == team.pk


def test_only_platform_admins_change_rules(org, team):
    from portfolio.errors import Forbidden

    for role in ("auditor", "owner", "viewer"):
        with pytest.raises(Forbidden):
            rules.create_rule(actor=actor_for(org[role]), kind="group", value="/x", org_role="auditor")
    rule = rules.create_rule(actor=actor_for(org["admin"]), kind="group", value="/x", org_role="auditor")
    with pytest.raises(Forbidden):
        rules.delete_rule(actor=actor_for(org["auditor"]), rule=rule)
    rules.delete_rule(actor=actor_for(org["admin"]), rule=rule)
    event = AuditEvent.objects.get(action="sso_mapping.delete")
    assert event.before["value"] == "/x" and not SsoMappingRule.objects.exists()


# --- desired ---------------------------------------------------------------------------------------
def test_desired_reads_groups_with_or_without_slash_realm_roles_and_this_clients_roles(
    admin, team, other_team, department
):
    rules.create_rule(
        actor=admin, kind="group", value="/customer-ops/support-ai", team=team, team_role="engineer"
    )
    rules.create_rule(actor=admin, kind="realm_role", value="portfolio-admin", org_role="admin")
    rules.create_rule(actor=admin, kind="client_role", value="auditor", org_role="auditor")
    rules.create_rule(actor=admin, kind="group", value="/legal", department=department)
    assert mapping.desired(claims(groups=["customer-ops/support-ai"]), CLIENT) == {
        mapping.TeamGrant(team.pk, "engineer")
    }
    assert mapping.desired(claims(groups=["/customer-ops/support-ai"]), CLIENT) == {
        mapping.TeamGrant(team.pk, "engineer")
    }
    # Only the exact path: a parent or a child group is another group.
    assert mapping.desired(claims(groups=["/customer-ops", "/customer-ops/support-ai/eu"]), CLIENT) == set()
    assert mapping.desired(claims(realm_roles=["portfolio-admin"], client_roles=["auditor"]), CLIENT) == {
        mapping.OrgGrant("admin"),
        mapping.OrgGrant("auditor"),
    }
    # Another client's role of the same name is not this platform's.
    assert mapping.desired(claims(client_roles=["auditor"], client="grafana"), CLIENT) == set()
    assert mapping.desired(claims(groups=["/legal"]), CLIENT) == {
        mapping.DepartmentGrant(department.pk, "manager")
    }
    assert mapping.desired({}, CLIENT) == set()
    assert (
        mapping.desired({"groups": "not-a-list", "realm_access": ["x"], "resource_access": None}, CLIENT)
        == set()
    )


def test_two_rules_giving_one_team_give_the_stronger_role(admin, team):
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="viewer")
    rules.create_rule(actor=admin, kind="realm_role", value="support-lead", team=team, team_role="owner")
    rules.create_rule(actor=admin, kind="group", value="/engineers", team=team, team_role="engineer")
    given = mapping.desired(claims(groups=["/support", "/engineers"], realm_roles=["support-lead"]), CLIENT)
    assert given == {mapping.TeamGrant(team.pk, "owner")}
    assert mapping.desired(claims(groups=["/support", "/engineers"]), CLIENT) == {
        mapping.TeamGrant(team.pk, "engineer")
    }


# --- apply -----------------------------------------------------------------------------------------
def test_apply_creates_changes_and_removes_sso_rows_each_audited(admin, person, team, other_team, department):
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="viewer")
    rules.create_rule(actor=admin, kind="group", value="/support-leads", team=team, team_role="owner")
    rules.create_rule(actor=admin, kind="group", value="/legal", team=other_team, team_role="engineer")
    rules.create_rule(actor=admin, kind="realm_role", value="portfolio-auditor", org_role="auditor")
    rules.create_rule(actor=admin, kind="group", value="/ops-managers", department=department)
    first = claims(groups=["/support", "/legal", "/ops-managers"], realm_roles=["portfolio-auditor"])
    with transaction.atomic():
        summary = mapping.apply(person, first, actor=KEYCLOAK, client_id=CLIENT)
    assert len(summary.created) == 4 and not summary.updated and not summary.removed
    assert rows(person) == {
        "teams": {("support-ai", "viewer", "sso"), ("contracts", "engineer", "sso")},
        "org": {("auditor", "sso")},
        "departments": {("CC-100", "manager", "sso")},
    }
    events = AuditEvent.objects.filter(actor_label="system:keycloak").order_by("sequence")
    assert sorted(e.action for e in events) == [
        "department_role.grant",
        "membership.create",
        "membership.create",
        "org_role.grant",
    ]
    assert all(e.after["source"] == "sso" and e.actor_kind == "system" for e in events)
    created = events.get(action="membership.create", team_id=team.pk)
    assert created.after == {"user": "alice", "team": "support-ai", "role": "viewer", "source": "sso"}

    # Promoted in one group, out of another, the auditor role and the department gone.
    last = events.last().sequence
    second = claims(groups=["/support-leads"])
    summary = mapping.apply(person, second, actor=KEYCLOAK, client_id=CLIENT)
    assert (len(summary.created), len(summary.updated), len(summary.removed)) == (0, 1, 3)
    assert rows(person) == {"teams": {("support-ai", "owner", "sso")}, "org": set(), "departments": set()}
    later = AuditEvent.objects.filter(sequence__gt=last).order_by("sequence")
    assert sorted(e.action for e in later) == [
        "department_role.revoke",
        "membership.delete",
        "membership.update",
        "org_role.revoke",
    ]
    update = later.get(action="membership.update")
    assert (update.before["role"], update.after["role"], update.after["source"]) == ("viewer", "owner", "sso")
    assert all(e.after["source"] == "sso" for e in later)

    # Nothing changes, nothing is audited, when nothing did.
    count = AuditEvent.objects.count()
    assert not mapping.apply(person, second, actor=KEYCLOAK, client_id=CLIENT).changed
    assert AuditEvent.objects.count() == count


def test_apply_takes_over_local_rows_a_rule_gives_and_leaves_other_local_rows_alone(
    org, admin, person, team, other_team, department, other_department
):
    owner = actor_for(org["owner"])
    services.add_member(actor=owner, team=team, user=person, role="engineer")
    services.add_member(actor=actor_for(org["outsider"]), team=other_team, user=person, role="viewer")
    services.set_org_roles(actor=admin, user=person, roles=["auditor"])
    services.grant_department_role(actor=admin, user=person, department=other_department)
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="engineer")
    rules.create_rule(actor=admin, kind="group", value="/support", org_role="auditor")

    mapping.apply(person, claims(groups=["/support"]), actor=KEYCLOAK, client_id=CLIENT)

    assert rows(person) == {
        "teams": {("support-ai", "engineer", "sso"), ("contracts", "viewer", "local")},
        "org": {("auditor", "sso")},
        "departments": {("CC-200", "manager", "local")},
    }
    taken = AuditEvent.objects.get(action="membership.update", actor_label="system:keycloak")
    assert (taken.before["source"], taken.after["source"]) == ("local", "sso")
    grant = AuditEvent.objects.get(action="org_role.grant", actor_label="system:keycloak")
    assert grant.before["source"] == "local" and grant.after["source"] == "sso"

    # Once the group goes, so does what the rules took over; the local rows stay.
    mapping.apply(person, claims(), actor=KEYCLOAK, client_id=CLIENT)
    assert rows(person) == {
        "teams": {("contracts", "viewer", "local")},
        "org": set(),
        "departments": {("CC-200", "manager", "local")},
    }


def test_a_directory_sync_applies_claims_built_from_the_admin_api(admin, person, team):
    rules.create_rule(actor=admin, kind="client_role", value="support", team=team, team_role="developer")
    built = {"groups": [], "realm_access": {"roles": []}, "resource_access": {CLIENT: {"roles": ["support"]}}}
    summary = mapping.apply(person, built, actor=Actor.for_system("keycloak"), client_id=CLIENT)
    assert summary.created == ["member of support-ai as developer"]
    assert Membership.objects.get(user=person).source == GrantSource.SSO


def test_a_failed_apply_leaves_no_change_and_no_audit_row(admin, person, team, monkeypatch):
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="viewer")
    rules.create_rule(actor=admin, kind="group", value="/support", org_role="auditor")
    count = AuditEvent.objects.count()

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(mapping, "_apply_org_roles", broken)
    with pytest.raises(RuntimeError):
        mapping.apply(person, claims(groups=["/support"]), actor=KEYCLOAK, client_id=CLIENT)
    assert not Membership.objects.filter(user=person).exists() and AuditEvent.objects.count() == count


# --- Local edits of single sign-on rows ------------------------------------------------------------
def test_local_edits_of_sso_rows_are_refused_with_where_they_come_from(
    settings, org, admin, person, team, department
):
    settings.OIDC = {
        "server_url": "http://idp.invalid/",
        "realm": "r",
        "client_id": CLIENT,
        "organisation": "Acme",
    }
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="viewer")
    rules.create_rule(actor=admin, kind="group", value="/support", org_role="auditor")
    rules.create_rule(actor=admin, kind="group", value="/support", department=department)
    mapping.apply(person, claims(groups=["/support"]), actor=KEYCLOAK, client_id=CLIENT)
    membership = Membership.objects.get(user=person)
    owner = actor_for(org["owner"])
    before = rows(person)
    with pytest.raises(Conflict, match="membership of Support AI comes from Acme single sign-on") as refused:
        services.change_member_role(actor=owner, membership=membership, role="engineer")
    assert refused.value.code == "sso_managed"
    with pytest.raises(Conflict, match="Acme single sign-on"):
        services.remove_member(actor=admin, membership=membership)
    with pytest.raises(Conflict, match="role auditor comes from Acme single sign-on"):
        services.set_org_roles(actor=admin, user=person, roles=[])
    with pytest.raises(Conflict, match="Acme single sign-on"):
        services.revoke_department_role(actor=admin, user=person, department=department)
    assert rows(person) == before
    # Adding a local role beside the single sign-on one is fine.
    services.set_org_roles(actor=admin, user=person, roles=["auditor", "admin"])
    assert rows(person)["org"] == {("auditor", "sso"), ("admin", "local")}


@pytest.mark.django_db(transaction=True)
def test_a_sign_in_taking_over_a_membership_being_removed_waits_for_it_and_neither_deadlocks(
    org, admin, person, team, monkeypatch
):
    """An owner removes a person's local membership while their sign-in maps the same team: both lock the
    team, then the membership, in that order."""
    owner = actor_for(org["owner"])
    membership = services.add_member(actor=owner, team=team, user=person, role="engineer")
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="engineer")
    pause = Pause()
    monkeypatch.setattr(services, "_lock_owners", pause.hook(services._lock_owners))

    removed, signed_in = interleave(
        pause,
        lambda: services.remove_member(actor=owner, membership=membership),
        lambda: mapping.apply(person, claims(groups=["/support"]), actor=KEYCLOAK, client_id=CLIENT),
    )

    assert (removed.error, signed_in.error) == (None, None)
    assert rows(person)["teams"] == {("support-ai", "engineer", "sso")}

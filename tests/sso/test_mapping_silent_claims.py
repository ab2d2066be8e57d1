"""A claim left out is not an empty one: Keycloak's default ``roles`` scope puts client roles (and realm roles)
into access tokens only, so an ID token without ``resource_access`` says nothing of the person's client roles,
and a browser sign-in must not take away what a client-role rule gave (the directory sync would give it back
at its next run, and take it again at the next sign-in). A ``resource_access`` without the role does take it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Membership, OrgRoleGrant
from portfolio.accounts.sso import mapping, rules
from portfolio.audit.models import AuditEvent
from tests.conftest import actor_for
from tests.sso import test_id_tokens
from tests.sso.test_id_tokens import answer, signed

pytestmark = pytest.mark.django_db
trusted, realm_client = test_id_tokens.trusted, test_id_tokens.realm_client  # the same fixtures
CLIENT = "portfolio"
KEYCLOAK = Actor.for_system("keycloak")
REALM_FILE = Path(__file__).resolve().parents[2] / "deploy" / "keycloak" / "portfolio-realm.json"


@pytest.fixture
def admin(make_user):
    return actor_for(make_user("root", org_role="admin"))


@pytest.fixture
def person(make_user):
    return make_user("alice")


def team_roles(user) -> set[tuple[str, str, str]]:
    return {(m.team.slug, m.role, m.source) for m in Membership.objects.filter(user=user)}


def test_claims_without_resource_access_keep_what_a_client_role_rule_gave(admin, person, team):
    rules.create_rule(actor=admin, kind="client_role", value="support", team=team, team_role="developer")
    rules.create_rule(actor=admin, kind="client_role", value="auditor", org_role="auditor")
    given = {"groups": [], "realm_access": {"roles": []}, "resource_access": {CLIENT: {"roles": ["support"]}}}
    mapping.apply(
        person,
        {**given, "resource_access": {CLIENT: {"roles": ["support", "auditor"]}}},
        actor=KEYCLOAK,
        client_id=CLIENT,
    )
    changes = AuditEvent.objects.count()

    # An ID token of Keycloak's default scopes: groups and realm roles, no client roles at all.
    summary = mapping.apply(
        person, {"groups": [], "realm_access": {"roles": []}}, actor=KEYCLOAK, client_id=CLIENT
    )

    assert not summary.changed and AuditEvent.objects.count() == changes
    assert team_roles(person) == {("support-ai", "developer", "sso")}
    assert OrgRoleGrant.objects.get(user=person).role == "auditor"

    # Claims that do speak of this client's roles, without them, take them.
    summary = mapping.apply(
        person, {**given, "resource_access": {"account": {"roles": []}}}, actor=KEYCLOAK, client_id=CLIENT
    )
    assert summary.removed == ["member of support-ai", "organisation role auditor"]
    assert not OrgRoleGrant.objects.filter(user=person).exists()


def test_a_silent_kind_does_not_lower_a_team_role_it_may_give(admin, person, team):
    rules.create_rule(actor=admin, kind="client_role", value="support-lead", team=team, team_role="owner")
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="viewer")
    both = {"groups": ["/support"], "resource_access": {CLIENT: {"roles": ["support-lead"]}}}
    mapping.apply(person, both, actor=KEYCLOAK, client_id=CLIENT)
    assert team_roles(person) == {("support-ai", "owner", "sso")}

    mapping.apply(person, {"groups": ["/support"]}, actor=KEYCLOAK, client_id=CLIENT)
    assert team_roles(person) == {("support-ai", "owner", "sso")}

    # Left the group too: still nothing the claims can say of the client role.
    mapping.apply(person, {"groups": []}, actor=KEYCLOAK, client_id=CLIENT)
    assert team_roles(person) == {("support-ai", "owner", "sso")}


def test_a_silent_kind_leaves_alone_only_what_its_rules_could_give(admin, person, team, other_team):
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="engineer")
    rules.create_rule(actor=admin, kind="realm_role", value="contracts", team=other_team, team_role="viewer")
    mapping.apply(
        person,
        {"groups": ["/support"], "realm_access": {"roles": ["contracts"]}},
        actor=KEYCLOAK,
        client_id=CLIENT,
    )

    # Silent about realm roles, and no longer in the group: the group's grant goes, the role's stays.
    mapping.apply(person, {"groups": []}, actor=KEYCLOAK, client_id=CLIENT)

    assert team_roles(person) == {("contracts", "viewer", "sso")}


@pytest.mark.e2e
def test_a_browser_sign_in_whose_id_token_has_no_client_roles_keeps_the_client_role_grant(
    realm_client, monkeypatch, trusted, admin, team
):
    rules.create_rule(actor=admin, kind="client_role", value="support", team=team, team_role="developer")
    roles = {"groups": [], "realm_access": {"roles": []}}
    response = answer(
        realm_client,
        monkeypatch,
        lambda claims: signed({**claims, **roles, "resource_access": {CLIENT: {"roles": ["support"]}}}),
    )
    assert response.status_code == 302 and response["Location"] == "/"
    alice = Membership.objects.get(team=team).user
    realm_client.logout()

    response = answer(realm_client, monkeypatch, lambda claims: signed({**claims, **roles}))

    assert response.status_code == 302 and response["Location"] == "/"
    assert team_roles(alice) == {("support-ai", "developer", "sso")}
    assert not AuditEvent.objects.filter(action="membership.delete").exists()


def test_the_realm_puts_client_roles_into_the_id_token():
    realm = json.loads(REALM_FILE.read_text())
    client = next(client for client in realm["clients"] if client["clientId"] == CLIENT)
    mapper = next(
        m for m in client["protocolMappers"] if m["protocolMapper"] == "oidc-usermodel-client-role-mapper"
    )["config"]
    assert mapper["usermodel.clientRoleMapping.clientId"] == CLIENT
    assert mapper["claim.name"] == f"resource_access.{CLIENT}.roles"
    assert mapper["id.token.claim"] == mapper["access.token.claim"] == "true"

"""The mapping rules at sign-in, through the real provider: a person's realm groups and roles give their teams
and roles here at every sign-in, and take them back when the rules no longer give them."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from portfolio.accounts import services
from portfolio.accounts.models import Membership, OrgRoleGrant
from portfolio.accounts.sso import rules
from portfolio.audit.models import AuditEvent
from tests.conftest import actor_for
from tests.sso.test_sign_in import sign_in_at_realm, signed_in_user, start

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
User = get_user_model()


@pytest.fixture
def admin(make_user):
    return actor_for(make_user("root", org_role="admin"))


def sign_in(client, username: str):
    client.logout()
    response = client.get(sign_in_at_realm(start(client), username))
    assert response.status_code == 302 and response["Location"] == "/", response
    assert signed_in_user(client) is not None
    return User.objects.get(username=username)


def test_alice_lands_in_the_team_her_group_maps_to_with_its_role(client, sso, admin, team, other_team):
    rules.create_rule(
        actor=admin, kind="group", value="/customer-ops/support-ai", team=team, team_role="engineer"
    )
    rules.create_rule(
        actor=admin, kind="group", value="/finance/forecasting", team=other_team, team_role="owner"
    )

    alice = sign_in(client, "alice")

    membership = Membership.objects.get(user=alice)
    assert (membership.team, membership.role, membership.source) == (team, "engineer", "sso")
    assert client.get(reverse("team-detail", args=[team.slug])).status_code == 200
    assert client.get(reverse("team-detail", args=[other_team.slug])).status_code == 404
    event = AuditEvent.objects.get(action="membership.create")
    assert (event.actor_label, event.after) == (
        "system:keycloak",
        {"user": "alice", "team": "support-ai", "role": "engineer", "source": "sso"},
    )
    # The grant and the login are one transaction's rows, in order: created, mapped, signed in.
    actions = list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))
    assert actions[-3:] == ["user.create", "membership.create", "user.login"]
    assert alice.first_name == "Alice Example" and alice.email == "alice@example.com"


def test_bob_is_a_platform_admin_through_his_realm_role(client, sso, admin):
    rules.create_rule(actor=admin, kind="realm_role", value="portfolio-admin", org_role="admin")
    bob = sign_in(client, "bob")
    assert OrgRoleGrant.objects.get(user=bob).source == "sso"
    assert client.get(reverse("user-list")).status_code == 200
    grant = AuditEvent.objects.get(action="org_role.grant")
    assert grant.after == {"user": "bob", "role": "admin", "org_roles": ["admin"], "source": "sso"}
    # Alice has no such role: the same pages are not hers.
    sign_in(client, "alice")
    assert client.get(reverse("user-list")).status_code == 403


def test_a_person_whose_group_no_longer_maps_loses_the_team_at_the_next_sign_in(client, sso, admin, team):
    rule = rules.create_rule(
        actor=admin, kind="group", value="/customer-ops/support-ai", team=team, team_role="viewer"
    )
    alice = sign_in(client, "alice")
    assert Membership.objects.filter(user=alice, team=team).exists()
    rules.delete_rule(actor=admin, rule=rule)
    assert Membership.objects.filter(user=alice, team=team).exists()  # until she signs in again

    sign_in(client, "alice")

    assert not Membership.objects.filter(user=alice).exists()
    removed = AuditEvent.objects.get(action="membership.delete")
    assert removed.actor_label == "system:keycloak"
    assert removed.after == {"source": "sso", "live_api_keys": []}
    page = client.get(reverse("dashboard"))
    assert page.status_code == 200
    assert "Your account has no team yet: your Acme groups map to none here" in page.text


def test_a_local_membership_is_kept_while_no_rule_gives_it(client, sso, admin, team):
    alice = sign_in(client, "alice")
    services.add_member(actor=admin, team=team, user=alice, role="developer")
    sign_in(client, "alice")
    assert Membership.objects.get(user=alice).source == "local"


def test_the_realms_email_and_name_are_copied_at_each_sign_in(client, sso):
    alice = sign_in(client, "alice")
    User.objects.filter(pk=alice.pk).update(email="old@example.com", first_name="Al")
    sign_in(client, "alice")
    alice.refresh_from_db()
    assert (alice.email, alice.first_name) == ("alice@example.com", "Alice Example")
    event = AuditEvent.objects.get(action="user.update")
    assert event.actor_label == "system:keycloak"
    assert event.before == {"email": "old@example.com", "first_name": "Al", "last_name": ""}
    assert event.after == {
        "email": "alice@example.com",
        "first_name": "Alice Example",
        "last_name": "",
        "source": "sso",
    }
    sign_in(client, "alice")
    assert AuditEvent.objects.filter(action="user.update").count() == 1  # nothing changed, nothing audited


def test_sso_memberships_show_where_they_come_from_and_offer_no_edit(client, sso, admin, org, team):
    rules.create_rule(
        actor=admin, kind="group", value="/customer-ops/support-ai", team=team, team_role="viewer"
    )
    alice = sign_in(client, "alice")
    membership = Membership.objects.get(user=alice)
    client.force_login(org["owner"])
    page = client.get(reverse("team-detail", args=[team.slug])).text
    assert "from Acme single sign-on" in page
    assert reverse("member-remove", args=[team.slug, membership.pk]) not in page
    assert reverse("member-role", args=[team.slug, membership.pk]) not in page
    # A local member's row keeps its buttons.
    viewer = Membership.objects.get(user=org["viewer"], team=team)
    assert reverse("member-remove", args=[team.slug, viewer.pk]) in page

    response = client.post(reverse("member-remove", args=[team.slug, membership.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "comes from Acme single sign-on" in response.text
    assert Membership.objects.filter(pk=membership.pk).exists()

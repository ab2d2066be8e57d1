"""The permission gate: invisible is 404, visible-but-not-allowed is 403, all from one matrix."""

import pytest

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.capabilities import MATRIX, ORG_ACTIONS, matrix_rows
from portfolio.accounts.models import Department, Membership, Team
from portfolio.errors import Forbidden, NotFound
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


def test_every_org_action_is_in_the_matrix():
    assert set(MATRIX) >= ORG_ACTIONS


def test_an_unknown_action_is_a_programming_error_not_a_refusal(org):
    with pytest.raises(KeyError, match="capability matrix"):
        gate.can(actor_for(org["admin"]), "team.explode")


def test_the_admin_column_allows_everything():
    assert all(row["admin"] for _, row in matrix_rows())


def test_members_see_only_their_own_teams(org, team, other_team):
    assert list(gate.visible(actor_for(org["viewer"]), Team)) == [team]
    assert list(gate.visible(actor_for(org["outsider"]), Team)) == [other_team]


def test_auditors_and_admins_see_every_team(org, team, other_team):
    for who in ("auditor", "admin"):
        assert set(gate.visible(actor_for(org[who]), Team)) == {team, other_team}


def test_a_member_of_team_a_gets_not_found_for_team_b(org, other_team):
    with pytest.raises(NotFound):
        gate.require(actor_for(org["owner"]), "team.change", other_team)


def test_a_viewer_may_see_but_not_change_the_team(org, team):
    gate.require(actor_for(org["viewer"]), "team.view", team)
    with pytest.raises(Forbidden):
        gate.require(actor_for(org["viewer"]), "team.change", team)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("owner", True),
        ("engineer", False),
        ("developer", False),
        ("viewer", False),
        ("auditor", False),
        ("admin", True),
    ],
)
def test_only_owners_and_admins_manage_members(org, team, role, allowed):
    assert gate.can(actor_for(org[role]), "member.manage", team) is allowed


@pytest.mark.parametrize(
    ("role", "allowed"),
    [("owner", False), ("viewer", False), ("auditor", True), ("admin", True), ("outsider", False)],
)
def test_only_auditors_and_admins_read_the_audit_trail(org, role, allowed):
    assert gate.can(actor_for(org[role]), "audit.view") is allowed


def test_an_anonymous_actor_is_refused_everything(team):
    with pytest.raises(Forbidden):
        gate.require(Actor(), "team.view", team)


def test_a_deactivated_user_loses_every_role(org, team):
    org["owner"].is_active = False
    org["owner"].save()
    assert list(gate.visible(actor_for(org["owner"]), Team)) == []


def test_department_visibility_follows_team_membership(org, department, other_department):
    assert list(gate.visible(actor_for(org["developer"]), Department)) == [department]
    with pytest.raises(NotFound):
        gate.get_visible(actor_for(org["developer"]), Department, pk=other_department.pk)


def test_memberships_of_other_teams_are_invisible(org, other_team):
    foreign = Membership.objects.get(team=other_team)
    assert not gate.visible(actor_for(org["owner"]), Membership).filter(pk=foreign.pk).exists()

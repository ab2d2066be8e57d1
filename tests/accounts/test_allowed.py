"""``gate.allowed``: what an actor sees and may act on, in one query, agrees with ``gate.can`` on each
row; and the team-scoped querysets it starts from."""

import pytest

from portfolio.accounts import gate
from portfolio.accounts.capabilities import MATRIX
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import Department, Membership, Team
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ROLES = ("admin", "auditor", "outsider", "owner", "engineer", "developer", "viewer")


@pytest.mark.parametrize("who", ROLES)
def test_the_teams_allowed_are_those_can_allows_for_every_action(org, team, other_team, who):
    actor = actor_for(org[who])
    for action in MATRIX:
        expected = {t for t in gate.visible(actor, Team) if gate.can(actor, action, t)}
        assert set(gate.allowed(actor, Team, action)) == expected, action


def test_a_member_of_two_teams_may_train_only_where_their_role_allows(org, team, other_team):
    Membership.objects.create(user=org["engineer"], team=other_team, role=TeamRole.VIEWER)
    actor = actor_for(org["engineer"])
    assert list(gate.allowed(actor, Team, "training.run")) == [team]
    assert set(gate.allowed(actor, Team, "team.view")) == {team, other_team}


def test_an_auditor_sees_every_team_but_may_train_in_none(org, team, other_team):
    assert not gate.allowed(actor_for(org["auditor"]), Team, "training.run").exists()


def test_an_admin_is_allowed_everything_they_see(org, team, other_team):
    assert set(gate.allowed(actor_for(org["admin"]), Team, "training.run")) == {team, other_team}


def test_allowed_narrows_any_team_scoped_model(org, team, other_team):
    owner_rows = gate.allowed(actor_for(org["owner"]), Membership, "member.manage")
    assert {m.team_id for m in owner_rows} == {team.pk}
    assert not gate.allowed(actor_for(org["viewer"]), Membership, "member.manage").exists()


def test_an_unknown_action_is_a_programming_error(org):
    with pytest.raises(KeyError, match="capability matrix"):
        gate.allowed(actor_for(org["owner"]), Team, "team.explode")


def test_a_department_with_two_of_the_members_teams_is_listed_once(org, team, department):
    second = Team.objects.create(department=department, name="Search", slug="search")
    Membership.objects.create(user=org["viewer"], team=second, role=TeamRole.VIEWER)
    assert list(gate.visible(actor_for(org["viewer"]), Department)) == [department]


def test_of_teams_follows_each_querysets_path_to_its_team(org, team, other_team):
    assert list(Team.objects.of_teams([team.pk])) == [team]
    assert {m.team_id for m in Membership.objects.of_teams([other_team.pk])} == {other_team.pk}
    assert list(Department.objects.of_teams([other_team.pk])) == [other_team.department]

"""An owner adds a person to a team while the person's sign-in (or the directory sync) maps the same team.
Both take the person, then the team, then the membership: whichever comes second waits, then finds the
other's membership. The owner's insert once took no lock up front, and checked its reference to the person
only at commit, under the sign-in's lock on them, while the sign-in's insert waited for the owner's
uncommitted row: a deadlock, and a 500 for one of them."""

from __future__ import annotations

import pytest

from portfolio.accounts import services
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Membership
from portfolio.accounts.sso import mapping, rules
from portfolio.audit import services as audit
from portfolio.errors import Conflict
from tests.conftest import actor_for
from tests.interleave import Pause, interleave

CLIENT = "portfolio"
KEYCLOAK = Actor.for_system("keycloak")
CLAIMS = {"groups": ["/support"], "realm_access": {"roles": []}, "resource_access": {}}


@pytest.fixture
def mapped(org, make_user, team):
    """Alice, whose group the rules map to ``team``, and the team's owner."""
    admin = actor_for(make_user("root", org_role="admin"))
    rules.create_rule(actor=admin, kind="group", value="/support", team=team, team_role="developer")
    return make_user("alice"), actor_for(org["owner"])


def apply(person):
    return mapping.apply(person, CLAIMS, actor=KEYCLOAK, client_id=CLIENT)


@pytest.mark.django_db(transaction=True)
def test_an_owner_adding_a_person_whose_sign_in_maps_the_team_meanwhile_is_told_they_are_a_member(
    mapped, team, monkeypatch
):
    person, owner = mapped
    pause = Pause()  # the sign-in has locked the person and read what the rules give
    monkeypatch.setattr(mapping, "desired", pause.hook(mapping.desired))

    signed_in, added = interleave(
        pause,
        lambda: apply(person),
        lambda: services.add_member(actor=owner, team=team, user=person, role="viewer"),
    )

    assert signed_in.error is None
    assert isinstance(added.error, Conflict) and "already a member" in str(added.error)
    assert list(Membership.objects.filter(user=person).values_list("role", "source")) == [
        ("developer", "sso")
    ]


@pytest.mark.django_db(transaction=True)
def test_a_sign_in_mapping_a_team_an_owner_is_adding_the_person_to_takes_the_membership_over(
    mapped, team, monkeypatch
):
    person, owner = mapped
    pause = Pause()  # the owner has added the person and is about to commit
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))

    added, signed_in = interleave(
        pause,
        lambda: services.add_member(actor=owner, team=team, user=person, role="viewer"),
        lambda: apply(person),
    )

    assert (added.error, signed_in.error) == (None, None)
    assert signed_in.result.updated == ["member of support-ai as developer"]
    assert list(Membership.objects.filter(user=person).values_list("role", "source")) == [
        ("developer", "sso")
    ]

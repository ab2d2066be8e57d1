"""A team key outlives its creator: removed from the team or deactivated, they are marked "left" on the keys
page and the key's page, and the key keeps working until an owner revokes it."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portfolio.accounts import services as accounts
from portfolio.accounts.models import Membership
from serving.gateway import services
from serving.gateway.models import ApiKey
from tests.conftest import actor_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_gateway_processes")]

LEFT = re.compile(r'<span class="badge badge--warn" title="([^"]*)">left</span>')


def _badges(page: str) -> list[str]:
    return LEFT.findall(page)


def _remove(org, team, user) -> None:
    membership = Membership.objects.get(team=team, user=user)
    accounts.remove_member(actor=actor_for(org["owner"]), membership=membership)


def test_the_creator_removed_from_the_team_is_marked_left_on_both_pages(signed_in, org, team, key):
    _remove(org, team, org["developer"])
    key.refresh_from_db()
    assert key.revoked_at is None  # the team's key, not the person's

    client = signed_in(org["owner"])
    page = client.get(reverse("apikey-list")).content.decode()
    assert "by developer" in page
    assert _badges(page) == [
        "They are no longer on the team. The key belongs to the team and keeps working until an owner "
        "revokes it."
    ]
    edit = client.get(reverse("apikey-edit", args=[key.pk])).content.decode()
    assert _badges(edit) == _badges(page)


def test_a_deactivated_creator_is_still_marked_left_and_says_why(signed_in, org, key, system_actor):
    accounts.deactivate_user(actor=system_actor, user=org["developer"])
    client = signed_in(org["owner"])
    page = client.get(reverse("apikey-list")).content.decode()
    edit = client.get(reverse("apikey-edit", args=[key.pk])).content.decode()
    for shown in (page, edit):
        assert _badges(shown) == [
            "Their account is deactivated. The key belongs to the team and keeps working until an owner "
            "revokes it."
        ]


def test_a_creator_still_on_the_team_is_not_marked(signed_in, org, team, key, other_key):
    # The outsider created other_key and owns its team: a member there, though not of ``team``.
    client = signed_in(org["admin"])
    assert _badges(client.get(reverse("apikey-list")).content.decode()) == []
    assert _badges(client.get(reverse("apikey-edit", args=[key.pk])).content.decode()) == []


def test_a_key_a_platform_admin_made_for_a_team_they_are_not_on_is_not_marked(signed_in, org, team):
    """Admins make keys for any team without being on it: their keys were marked "left", never true."""
    made, _ = services.create_key(actor=actor_for(org["admin"]), team=team, name="made by the admin")
    client = signed_in(org["owner"])
    assert not Membership.objects.filter(team=team, user=org["admin"]).exists()
    assert _badges(client.get(reverse("apikey-list")).content.decode()) == []
    assert _badges(client.get(reverse("apikey-edit", args=[made.pk])).content.decode()) == []


def test_a_creator_removed_from_another_team_is_not_marked_on_this_teams_keys(
    signed_in, org, team, other_team, key
):
    elsewhere = Membership.objects.create(user=org["developer"], team=other_team, role="developer")
    accounts.remove_member(actor=actor_for(org["outsider"]), membership=elsewhere)  # other_team's owner
    assert _badges(signed_in(org["owner"]).get(reverse("apikey-list")).content.decode()) == []


def test_the_list_costs_the_same_queries_however_many_creators_left(signed_in, org, team, make_user):
    client = signed_in(org["owner"])
    services.create_key(actor=actor_for(org["developer"]), team=team, name="first")
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("apikey-list"))
    for n in range(5):
        user = make_user(f"leaver{n}")
        Membership.objects.create(user=user, team=team, role="developer")
        services.create_key(actor=actor_for(user), team=team, name=f"key {n}")
        _remove(org, team, user)
    with CaptureQueriesContext(connection) as many:
        page = client.get(reverse("apikey-list")).content.decode()
    assert len(_badges(page)) == 5 and ApiKey.objects.filter(team=team).count() == 6
    assert len(many) == len(few)

"""Removing a member leaves the team's keys they created working: the removal's audit row lists those still
live (never a secret), and the team page tells the owner which they are, to revoke what must go."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.accounts import services
from portfolio.accounts.models import Membership
from portfolio.audit.models import AuditEvent
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey
from tests.accounts.pages import HTMX, _text
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def developer_keys(org, team, other_team):
    """The developer's keys: two live ones in ``team``, one revoked, one expired, one in ``other_team``; and
    a key of ``team`` someone else created."""
    developer = actor_for(org["developer"])
    Membership.objects.create(user=org["developer"], team=other_team, role="developer")
    made = {
        name: key_services.create_key(actor=developer, team=where, name=name)[0]
        for name, where in (
            ("router prod", team),
            ("nightly batch", team),
            ("old script", team),
            ("trial", team),
            ("contracts batch", other_team),
        )
    }
    ApiKey.objects.filter(pk=made["old script"].pk).update(revoked_at=timezone.now())
    ApiKey.objects.filter(pk=made["trial"].pk).update(expires_at=timezone.now() - timedelta(days=1))
    made["owners key"] = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="owners key")[
        0
    ]
    return made


def test_the_removal_audit_row_lists_the_members_live_keys_of_that_team_only(org, team, developer_keys):
    membership = Membership.objects.get(team=team, user=org["developer"])
    live = services.remove_member(actor=actor_for(org["owner"]), membership=membership)

    event = AuditEvent.objects.get(action="membership.delete")
    assert event.before == {"user": "developer", "team": team.slug, "role": "developer"}
    expected = [developer_keys["router prod"], developer_keys["nightly batch"]]
    assert event.after == {"live_api_keys": [{"key_id": k.key_id, "name": k.name} for k in expected]}
    assert live == [f"{k.name} ({k.display_prefix})" for k in expected]
    assert all(ApiKey.objects.get(pk=k.pk).revoked_at is None for k in expected)  # still the team's
    assert "secret" not in str(event.after) and all(k.secret_hash not in str(event.after) for k in expected)


def test_a_member_without_keys_is_removed_with_an_empty_list(org, team):
    membership = Membership.objects.get(team=team, user=org["viewer"])
    assert services.remove_member(actor=actor_for(org["owner"]), membership=membership) == []
    assert AuditEvent.objects.get(action="membership.delete").after == {"live_api_keys": []}


def test_the_team_page_tells_the_owner_which_of_their_keys_stay_live(signed_in, org, team, developer_keys):
    membership = Membership.objects.get(team=team, user=org["developer"])
    response = signed_in(org["owner"]).post(reverse("member-remove", args=[team.slug, membership.pk]), **HTMX)
    page = _text(response)
    assert response.status_code == 200 and "developer removed from Support AI." in page
    prod, nightly = developer_keys["router prod"], developer_keys["nightly batch"]
    assert (
        f"still live: router prod ({prod.display_prefix}), nightly batch ({nightly.display_prefix})" in page
    )
    assert "until an owner revokes them" in page
    assert "old script" not in page and "contracts batch" not in page and "owners key" not in page


def test_removing_a_member_without_keys_says_nothing_of_keys(signed_in, org, team):
    membership = Membership.objects.get(team=team, user=org["viewer"])
    page = _text(
        signed_in(org["owner"]).post(reverse("member-remove", args=[team.slug, membership.pk]), **HTMX)
    )
    assert "viewer removed from Support AI." in page and "still live" not in page


def test_a_removal_by_single_sign_on_lists_the_live_keys_too(org, team, developer_keys):
    """The directory (a sign-in's claims, the sync) removes a membership it gave without remove_member: its
    audit row lists the keys left live as an owner's removal does."""
    from portfolio.accounts.actor import Actor
    from portfolio.accounts.sso import mapping

    Membership.objects.filter(team=team, user=org["developer"]).update(source="sso")
    mapping.apply(org["developer"], {}, actor=Actor.for_system("keycloak"), client_id="portfolio")
    event = AuditEvent.objects.get(action="membership.delete", team_id=team.pk)
    expected = [developer_keys["router prod"], developer_keys["nightly batch"]]
    assert event.after == {
        "source": "sso",
        "live_api_keys": [{"key_id": k.key_id, "name": k.name} for k in expected],
    }

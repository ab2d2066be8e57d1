"""The directory sync is the newest word on a person's groups: a token issued before a sync run, first used
after it, may not grant back what the run took away; one issued after it may."""

from __future__ import annotations

import time

import pytest

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import DirectorySync, Membership, SsoMappingRule
from portfolio.accounts.sso import directory, sync
from portfolio.accounts.sso import services as sso_services
from portfolio.accounts.sso.config import OidcConfig

pytestmark = pytest.mark.django_db
ISSUER = "http://127.0.0.1:1/realms/portfolio"
CONFIG = OidcConfig(server_url="http://127.0.0.1:1/", realm="portfolio", client_id="portfolio")
GROUP = "/customer-ops/support-ai"
SUBJECT = "7a1c2e34-0b5d-4f6a-8c9d-0e1f2a3b4c5d"


def signed_in(iat: int):
    claims = {"sub": SUBJECT, "preferred_username": "alice", "groups": [GROUP], "iat": iat}
    return sso_services.account_for(
        actor=Actor(ip="127.0.0.1"), issuer=ISSUER, claims=claims, organisation=""
    )


def test_a_token_older_than_the_last_sync_does_not_grant_back_what_the_sync_took(team):
    SsoMappingRule.objects.create(kind="group", value=GROUP, team=team, team_role="developer")
    now = int(time.time())
    alice = signed_in(now - 120)
    assert Membership.objects.filter(user=alice, team=team, source="sso").exists()

    # Keycloak now lists alice without the group: the sync removes her from the team.
    found = directory.Directory(enabled={SUBJECT: True})
    sync._apply(CONFIG, ISSUER, found, DirectorySync.objects.create())
    assert not Membership.objects.filter(user=alice, team=team).exists()

    signed_in(now - 60)  # issued before the sync ran, still naming the group
    assert not Membership.objects.filter(user=alice, team=team).exists(), "an older token granted it back"

    signed_in(now + 2)  # issued after the sync: the realm's newer word
    assert Membership.objects.filter(user=alice, team=team, source="sso").exists()

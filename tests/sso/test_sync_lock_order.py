"""The directory sync and a sign-in at once: both take a person's identity and user, then their teams. The sync
once applied everyone in one transaction, so it still held the team it had mapped for alice when it reached
bob, whose sign-in held bob and waited for that team: a deadlock, and a 500 for bob (or a run rolled back)."""

from __future__ import annotations

import pytest

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Membership, SsoMappingRule
from portfolio.accounts.sso import client, directory, mapping, sync
from portfolio.accounts.sso import services as sso_services
from portfolio.accounts.sso.config import OidcConfig
from portfolio.audit.models import AuditEvent
from tests.interleave import Pause, interleave

ISSUER = "http://127.0.0.1:1/realms/portfolio"
CONFIG = OidcConfig(server_url="http://127.0.0.1:1/", realm="portfolio", client_id="portfolio")
SYNC = {"client_id": "portfolio-sync", "client_secret": "sync-secret", "interval": 300}
GROUP = "/customer-ops/support-ai"
SUBJECTS = {"alice": "0f3b6c1e-alice", "bob": "9d2a7e45-bob"}


def sign_in(username: str):
    claims = {"sub": SUBJECTS[username], "preferred_username": username, "groups": [GROUP]}
    return sso_services.sign_in(actor=Actor(ip="127.0.0.1"), issuer=ISSUER, claims=claims, organisation="")


@pytest.mark.django_db(transaction=True)
def test_a_sync_and_a_sign_in_sharing_a_team_wait_for_each_other_and_neither_deadlocks(team, monkeypatch):
    SsoMappingRule.objects.create(kind="group", value=GROUP, team=team, team_role="developer")
    alice, bob = sign_in("alice"), sign_in("bob")  # alice's identity first: the sync applies her first
    found = directory.Directory(enabled=dict.fromkeys(SUBJECTS.values(), True))
    found.groups[GROUP] = set(SUBJECTS.values())
    monkeypatch.setattr(client, "discovery", lambda config: {"issuer": ISSUER})
    monkeypatch.setattr(directory, "read", lambda config, **kwargs: found)
    pause = Pause()  # the sync stops once it has mapped alice, holding her team
    monkeypatch.setattr(mapping, "apply", pause.hook(mapping.apply))

    synced, signed_in = interleave(pause, lambda: sync.run_once(CONFIG, SYNC), lambda: sign_in("bob"))

    assert (synced.error, signed_in.error) == (None, None)
    assert (synced.result.ok, synced.result.error) == (True, "")
    assert signed_in.result == bob
    assert set(Membership.objects.filter(team=team, source="sso").values_list("user", flat=True)) == {
        alice.pk,
        bob.pk,
    }


@pytest.mark.django_db
def test_a_person_whose_changes_fail_is_left_as_they_were_and_the_others_changes_stand(team, monkeypatch):
    SsoMappingRule.objects.create(kind="group", value=GROUP, team=team, team_role="developer")
    alice, bob = sign_in("alice"), sign_in("bob")
    found = directory.Directory(enabled=dict.fromkeys(SUBJECTS.values(), True))  # both left the group
    monkeypatch.setattr(client, "discovery", lambda config: {"issuer": ISSUER})
    monkeypatch.setattr(directory, "read", lambda config, **kwargs: found)
    real_apply = mapping.apply

    def fails_for_alice(user, *args, **kwargs):
        summary = real_apply(user, *args, **kwargs)
        if user.username == "alice":
            raise RuntimeError("the database went away")  # after her changes: they must be rolled back
        return summary

    monkeypatch.setattr(mapping, "apply", fails_for_alice)

    run = sync.run_once(CONFIG, SYNC)

    assert run.ok and run.memberships_changed == 1
    assert run.error == "Not applied (an error, logged), so left as they were: alice."
    assert list(Membership.objects.filter(team=team).values_list("user", flat=True)) == [alice.pk]
    removed = AuditEvent.objects.filter(action="membership.delete", actor_label="system:keycloak")
    assert [event.before["user"] for event in removed] == [bob.username]

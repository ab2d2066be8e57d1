"""The directory sync is as of the time its reading of the directory ended, not the time it applies it: a
sign-in between the two brings newer claims, which the run must neither undo nor refuse afterwards; a token
issued while the directory was read is older than it (a removal made then may be in the read). The read here is
a stand-in (as in test_sync_lock_order), after which alice signs in, as she could before the run applies it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import ExternalIdentity, Membership, SsoMappingRule
from portfolio.accounts.sso import client, directory, sync
from portfolio.accounts.sso import services as sso_services
from portfolio.accounts.sso.config import OidcConfig

pytestmark = pytest.mark.django_db
ISSUER = "http://127.0.0.1:1/realms/portfolio"
CONFIG = OidcConfig(server_url="http://127.0.0.1:1/", realm="portfolio", client_id="portfolio")
SYNC = {"client_id": "portfolio-sync", "client_secret": "sync-secret", "interval": 300}
GROUP = "/customer-ops/support-ai"
SUBJECT = "7a1c2e34-0b5d-4f6a-8c9d-0e1f2a3b4c5d"
READ_SECONDS_AGO = 10  # how long ago the stand-in's reading began


def signed_in(iat: int, groups=(GROUP,)):
    claims = {"sub": SUBJECT, "preferred_username": "alice", "groups": list(groups), "iat": iat}
    return sso_services.account_for(
        actor=Actor(ip="127.0.0.1"), issuer=ISSUER, claims=claims, organisation=""
    )


def first_signed_in_long_ago(iat: int, groups=(GROUP,)):
    """Alice, whose identity here is older than any read below."""
    alice = signed_in(iat, groups)
    ExternalIdentity.objects.filter(subject=SUBJECT).update(created_at=datetime.fromtimestamp(iat, UTC))
    return alice


def run_sync(monkeypatch, enabled: dict[str, bool], while_reading=lambda: None, began=READ_SECONDS_AGO):
    """One run whose read began ``began`` seconds ago, ended ``READ_SECONDS_AGO`` ago and found ``enabled`` (in
    no group), ``while_reading`` happening before the run applies it."""

    def read(config, **kwargs):
        found = directory.Directory(enabled=enabled)
        found.started_at = datetime.now(UTC) - timedelta(seconds=began)
        found.read_at = datetime.now(UTC) - timedelta(seconds=READ_SECONDS_AGO)
        while_reading()
        return found

    monkeypatch.setattr(client, "discovery", lambda config: {"issuer": ISSUER})
    monkeypatch.setattr(directory, "read", read)
    run = sync.run_once(CONFIG, SYNC)
    assert run.ok, run.error
    return run


@pytest.fixture
def rule(team):
    return SsoMappingRule.objects.create(kind="group", value=GROUP, team=team, team_role="developer")


def test_a_sign_in_during_the_read_is_not_undone_by_the_run(monkeypatch, rule, team):
    now = int(time.time())
    alice = first_signed_in_long_ago(now - 120, groups=())  # not in the group yet
    assert not Membership.objects.filter(user=alice).exists()

    # Added to the group after the read began: her token says so, the read does not.
    run = run_sync(monkeypatch, {SUBJECT: True}, while_reading=lambda: signed_in(now - 5))

    assert Membership.objects.filter(user=alice, team=team, source="sso").exists(), "the older read undid it"
    assert run.memberships_changed == 0
    issued = ExternalIdentity.objects.get(subject=SUBJECT).claims_issued_at
    assert issued == datetime.fromtimestamp(now - 5, UTC)


def test_a_token_issued_between_the_read_and_the_apply_may_still_be_used(monkeypatch, rule, team):
    now = int(time.time())
    alice = first_signed_in_long_ago(now - 120, groups=())
    run_sync(monkeypatch, {SUBJECT: True})
    assert not Membership.objects.filter(user=alice).exists()

    signed_in(now - 5)  # issued after the read began, first used after the run: the newer word

    assert Membership.objects.filter(user=alice, team=team, source="sso").exists(), "refused as older"


def test_a_token_issued_before_the_read_is_still_refused(monkeypatch, rule, team):
    now = int(time.time())
    alice = first_signed_in_long_ago(now - 120)
    run_sync(monkeypatch, {SUBJECT: True})  # the read: no longer in the group
    assert not Membership.objects.filter(user=alice).exists()

    signed_in(now - READ_SECONDS_AGO - 5)

    assert not Membership.objects.filter(user=alice).exists(), "an older token granted it back"


def test_someone_first_signed_in_during_the_read_is_not_taken_for_gone(monkeypatch, rule, team):
    """New in Keycloak since the listing, and signed in here for the first time before it was applied: not
    listed, and not gone either."""
    found: dict[str, Any] = {}
    run = run_sync(
        monkeypatch,
        {"someone-else": True},
        while_reading=lambda: found.update(alice=signed_in(int(time.time()))),
    )

    alice = found["alice"]
    alice.refresh_from_db()
    assert alice.is_active and run.deactivated == 0
    assert Membership.objects.filter(user=alice, team=team, source="sso").exists()


def test_a_token_issued_while_the_directory_was_read_cannot_give_back_what_the_run_removed(
    monkeypatch, rule, team
):
    """Removed from the group in Keycloak while the sync read the directory, after her client had fetched a
    token: the read saw the removal, so that token is older than the directory and must not grant it back."""
    now = int(time.time())
    alice = first_signed_in_long_ago(now - 120)
    assert Membership.objects.filter(user=alice, team=team).exists()
    run_sync(monkeypatch, {SUBJECT: True}, began=READ_SECONDS_AGO + 20)  # read from 30 s to 10 s ago
    assert not Membership.objects.filter(user=alice).exists()

    signed_in(now - READ_SECONDS_AGO - 10)  # issued while the directory was read, still in the group then

    assert not Membership.objects.filter(user=alice).exists(), (
        "a token issued during the read granted it back"
    )


def test_a_directory_is_as_of_the_end_of_its_reading_and_lists_users_as_of_its_start(monkeypatch):
    """The sync compares tokens with ``read_at``: taken before the requests, a removal seen by a later
    request of the same read was dated before it happened."""
    calls: list[datetime] = []

    class Admin:
        def get_users(self, query):
            calls.append(datetime.now(UTC))
            return [{"id": SUBJECT, "enabled": True}]

        def get_group_by_path(self, path):
            return {"id": "g1"}

        def get_group_members(self, group_id, query):
            time.sleep(0.05)
            calls.append(datetime.now(UTC))
            return [{"id": SUBJECT}]

    monkeypatch.setattr(directory, "_admin", lambda *args: Admin())
    found = directory.read(
        CONFIG,
        client_id="portfolio-sync",
        client_secret="s",
        wanted=directory.Wanted(groups=frozenset({GROUP})),
    )
    assert found.started_at <= calls[0] and found.read_at >= calls[-1]
    assert found.groups[GROUP] == {SUBJECT}

"""A client-role rule needs the sync to find this platform's client in Keycloak, which shows clients only to an
account with realm-management ``view-clients``: to one with ``view-users`` alone it lists none (not a 403).
Read as nobody holding the role, every sync took what such rules gave (back at each sign-in, an audit row
each way); the sync now says it cannot read the directory and changes nothing."""

from __future__ import annotations

import pytest
from keycloak import KeycloakAdmin

from portfolio.accounts.models import Membership, SsoMappingRule
from portfolio.accounts.sso import directory, sync
from portfolio.accounts.tasks import sync_directory
from portfolio.audit.models import AuditEvent
from tests.accounts.sso_stand_in import oidc as oidc  # noqa: F401 - the fixture
from tests.sso.conftest import REDIRECT_URI, running_realm, switch_on
from tests.sso.test_sync_paging import ZED, Answer, Realm, realm_users, signed_in_long_ago

pytestmark = pytest.mark.django_db

SYNC = {"client_id": "portfolio-sync", "client_secret": "sync-secret-0123456789abcdef", "interval": 300}
CLIENT_UUID = "0b6f3b2e-client-uuid"


class RealmWithClients(Realm):
    """Also this platform's client, shown to a caller with ``view-clients``, and zed's client role."""

    def __init__(self, *, view_clients: bool):
        super().__init__(realm_users())
        self.view_clients = view_clients

    def raw_get(self, url: str, **query):
        if url.endswith("/clients"):
            shown = self.view_clients and query.get("clientId") == "portfolio"
            return Answer(200, [{"id": CLIENT_UUID, "clientId": "portfolio"}] if shown else [])
        if url.endswith(f"/role-mappings/clients/{CLIENT_UUID}/composite"):
            return Answer(200, [{"name": "support"}] if f"/users/{ZED}/" in url else [])
        return super().raw_get(url, **query)


@pytest.fixture
def zed_in_support(team):
    """Zed, given the team by the client role ``support`` at his sign-in."""
    SsoMappingRule.objects.create(kind="client_role", value="support", team=team, team_role="developer")
    zed = signed_in_long_ago("zed", ZED)
    Membership.objects.create(user=zed, team=team, role="developer", source="sso")
    return zed


def run_with(oidc, monkeypatch, realm: Realm):
    monkeypatch.setattr(directory, "_admin", lambda *args: KeycloakAdmin(connection=realm))
    return sync.run_once(oidc, SYNC)


def test_a_sync_that_cannot_see_the_client_changes_nothing_and_names_the_right_it_lacks(
    oidc, monkeypatch, zed_in_support, team
):
    run = run_with(oidc, monkeypatch, RealmWithClients(view_clients=False))

    assert not run.ok and "view-clients" in run.error and run.memberships_changed == 0
    assert Membership.objects.filter(user=zed_in_support, team=team, source="sso").exists()
    assert not AuditEvent.objects.filter(action="membership.delete").exists()


def test_a_sync_that_sees_the_client_keeps_what_a_client_role_gives(oidc, monkeypatch, zed_in_support, team):
    run = run_with(oidc, monkeypatch, RealmWithClients(view_clients=True))

    assert run.ok and run.error == "" and run.memberships_changed == 0
    assert Membership.objects.filter(user=zed_in_support, team=team, source="sso").exists()


@pytest.mark.e2e
def test_the_stand_in_realm_shows_the_client_only_to_a_sync_account_with_view_clients(
    tmp_path, settings, team
):
    SsoMappingRule.objects.create(kind="client_role", value="support", team=team, team_role="developer")
    users_only = ("portfolio-sync-users", "users-only-secret-0123456789ab")
    extra = (
        "--service-client",
        f"{SYNC['client_id']}:{SYNC['client_secret']}:read+view-clients",
        "--service-client",
        f"{users_only[0]}:{users_only[1]}:read",
    )
    with running_realm(tmp_path, [REDIRECT_URI], extra=extra) as realm:
        switch_on(settings, realm)
        settings.OIDC_SYNC = {**SYNC, "client_id": users_only[0], "client_secret": users_only[1]}
        refused = sync_directory()
        settings.OIDC_SYNC = SYNC
        read = sync_directory()

    assert not refused["ok"] and "view-clients" in refused["error"]
    assert read == {"ok": True, "error": "", "deactivated": 0, "changed": 0}

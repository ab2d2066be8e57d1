"""The directory sync against the realm's admin API: the stand-in of tests/sso/provider/admin.mjs, read by
python-keycloak's KeycloakAdmin with a read-only service-account client, as Keycloak's would be. Each test
gets its own provider process, because each changes the realm (through a second, writing client)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from keycloak import KeycloakAdmin, KeycloakOpenIDConnection

from portfolio.accounts import personal_tokens
from portfolio.accounts.models import DirectorySync, Membership, OrgRoleGrant, SsoMappingRule
from portfolio.accounts.sso import sync
from portfolio.accounts.tasks import sync_directory
from portfolio.audit.models import AuditEvent
from tests.conftest import actor_for
from tests.sso.conftest import REDIRECT_URI, USERS, running_realm, switch_on
from tests.sso.test_sign_in import sign_in_at_realm, start

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
User = get_user_model()
SYNC = {"client_id": "portfolio-sync", "client_secret": "sync-secret-0123456789abcdef", "interval": 300}
WRITER = ("realm-admin", "realm-admin-secret-0123456789")
GROUP = "/customer-ops/support-ai"


@pytest.fixture
def realm(tmp_path, settings):
    extra = (
        "--service-client",
        f"{SYNC['client_id']}:{SYNC['client_secret']}:read+view-clients",  # as the realm JSON's
        "--service-client",
        f"{WRITER[0]}:{WRITER[1]}:write",
    )
    with running_realm(tmp_path, [REDIRECT_URI], extra=extra) as started:
        switch_on(settings, started)
        settings.OIDC_SYNC = SYNC
        yield started


@pytest.fixture
def keycloak(realm) -> KeycloakAdmin:
    """The realm's administrator, changing users as someone would in Keycloak's console."""
    connection = KeycloakOpenIDConnection(
        server_url=realm.server_url,
        realm_name="portfolio",
        client_id=WRITER[0],
        client_secret_key=WRITER[1],
        grant_type="client_credentials",
    )
    return KeycloakAdmin(connection=connection)


@pytest.fixture
def alice(client, realm, team):
    """Alice, signed in through the realm, in the team her group maps to."""
    SsoMappingRule.objects.create(kind="group", value=GROUP, team=team, team_role="developer")
    client.get(sign_in_at_realm(start(client), "alice"))
    user = User.objects.get(username="alice")
    assert Membership.objects.filter(user=user, team=team, source="sso").exists()
    return user


def keycloak_audit(action: str):
    return AuditEvent.objects.filter(action=action, actor_label="system:keycloak")


def test_a_user_removed_from_a_group_in_keycloak_loses_the_team_at_the_next_sync(alice, keycloak, team):
    group = keycloak.get_group_by_path(GROUP.lstrip("/"))
    assert sync_directory()["changed"] == 0  # nothing changed in Keycloak yet

    keycloak.group_user_remove(USERS["alice"]["sub"], group["id"])
    outcome = sync_directory()

    assert outcome == {"ok": True, "error": "", "deactivated": 0, "changed": 1}
    assert not Membership.objects.filter(user=alice, team=team).exists()
    removed = keycloak_audit("membership.delete").get()
    assert removed.before["user"] == "alice" and removed.object_repr


def test_a_user_disabled_in_keycloak_is_deactivated_and_their_personal_token_stops_working(
    alice, keycloak, client
):
    _, token = personal_tokens.create_personal_token(actor=actor_for(alice), name="ci")
    api = "/api/v1/me"
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(api, headers=headers).status_code == 200

    keycloak.update_user(USERS["alice"]["sub"], {"enabled": False})
    assert sync_directory()["deactivated"] == 1

    alice.refresh_from_db()
    assert not alice.is_active
    assert client.get(api, headers=headers).status_code == 401
    assert client.get("/").status_code == 302  # the browser session ended too
    event = keycloak_audit("user.deactivate").get()
    assert event.before["is_active"] is True and event.after["is_active"] is False
    assert len(event.after["tokens_revoked"]) == 1 and event.after["sessions_ended"] == 1


def test_a_user_deleted_in_keycloak_is_deactivated_and_a_second_sync_changes_nothing(alice, keycloak):
    keycloak.delete_user(USERS["alice"]["sub"])
    assert sync_directory()["deactivated"] == 1
    assert sync_directory() == {"ok": True, "error": "", "deactivated": 0, "changed": 0}
    assert keycloak_audit("user.deactivate").count() == 1


def test_a_service_account_the_directory_does_not_list_is_not_deactivated(alice, client, realm):
    """Keycloak's GET /users leaves service-account users out (as the stand-in realm does): the account a
    client's access token made here just in time must not be taken for deleted at every sync."""
    from tests.sso.test_access_tokens import SERVICE_ACCOUNT, call, service_token

    token = service_token(realm)
    assert call(client, token).status_code == 200
    assert sync_directory()["deactivated"] == 0
    assert User.objects.get(username=SERVICE_ACCOUNT).is_active
    assert call(client, token).status_code == 200


def test_a_sync_that_cannot_read_keycloak_changes_nothing_and_says_so(
    alice, keycloak, settings, admin_client
):
    keycloak.update_user(USERS["alice"]["sub"], {"enabled": False})
    settings.OIDC_SYNC = {**SYNC, "client_secret": "not-the-secret"}

    outcome = sync_directory()

    alice.refresh_from_db()
    assert alice.is_active and not outcome["ok"] and "refused the sync (401)" in outcome["error"]
    assert not keycloak_audit("user.deactivate").exists()
    assert DirectorySync.objects.get().error == outcome["error"]


def test_a_client_without_read_rights_is_told_apart_from_an_unreachable_realm(alice, realm, settings):
    settings.OIDC_SYNC = {**SYNC, "client_id": "portfolio", "client_secret": "x"}
    assert not sync_directory()["ok"]
    settings.OIDC = {**settings.OIDC, "server_url": "http://127.0.0.1:9/"}
    outcome = sync_directory()
    assert not outcome["ok"] and "cannot be reached" in outcome["error"]
    alice.refresh_from_db()
    assert alice.is_active


def test_a_user_enabled_again_in_keycloak_is_not_reactivated_by_the_sync(alice, keycloak):
    keycloak.update_user(USERS["alice"]["sub"], {"enabled": False})
    sync_directory()
    keycloak.update_user(USERS["alice"]["sub"], {"enabled": True})
    sync_directory()
    alice.refresh_from_db()
    assert not alice.is_active


def test_no_sync_runs_without_its_client(settings, realm):
    settings.OIDC_SYNC = None
    assert sync_directory() is None and not DirectorySync.objects.exists()


def test_the_runs_are_kept_to_a_bounded_number(alice, monkeypatch):
    monkeypatch.setattr(sync, "KEEP_RUNS", 3)
    for _ in range(5):
        sync_directory()
    assert DirectorySync.objects.count() == 3


def test_the_single_sign_on_page_shows_the_last_runs_and_admins_may_sync_now(
    alice, keycloak, settings, client, org, monkeypatch
):
    from portfolio.accounts import tasks

    queued = []
    monkeypatch.setattr(tasks.sync_directory, "delay", lambda: queued.append(tasks.sync_directory()))
    client.force_login(org["admin"])
    page = client.get("/sso/mappings/").content.decode()
    assert "Directory sync" in page and "<strong>never</strong>" in page

    response = client.post("/sso/sync/", follow=True)
    assert response.status_code == 200 and queued == [
        {"ok": True, "error": "", "deactivated": 0, "changed": 0}
    ]
    assert "A directory sync was queued" in response.content.decode()

    settings.OIDC_SYNC = {**SYNC, "client_secret": "not-the-secret"}
    client.post("/sso/sync/")
    page = client.get("/sso/mappings/").content.decode()
    assert "The last sync changed nothing" in page and "refused the sync (401)" in page
    assert "<strong>never</strong>" not in page  # the earlier run was a success

    client.force_login(org["auditor"])
    assert "Sync now" not in client.get("/sso/mappings/").content.decode()
    assert client.post("/sso/sync/").status_code == 403


def test_a_user_removed_from_a_group_in_keycloak_loses_the_team_at_the_next_sign_in(alice, keycloak, team):
    from django.test import Client

    group = keycloak.get_group_by_path(GROUP.lstrip("/"))
    keycloak.group_user_remove(USERS["alice"]["sub"], group["id"])

    browser = Client()
    browser.get(sign_in_at_realm(start(browser), "alice"))

    assert browser.session.get("_auth_user_id") == str(alice.pk)
    assert not Membership.objects.filter(user=alice, team=team).exists()
    assert keycloak_audit("membership.delete").get().before["team"] == team.slug


def test_a_role_given_through_a_parent_group_is_kept_by_the_sync_and_lost_with_the_group_mapping(
    client, realm, keycloak, team, other_team
):
    """Tokens carry effective realm roles (a user's own and those of the groups they are in or under);
    Keycloak's /roles/{name}/users lists direct holders only. The sync reads the same roles a token
    carries, so a role held through a group is not gained at sign-in and lost at each sync."""
    SsoMappingRule.objects.create(
        kind="realm_role", value="support-leads", team=other_team, team_role="owner"
    )
    parent = keycloak.get_group_by_path("customer-ops")  # alice is in /customer-ops/support-ai, under it
    keycloak.assign_group_realm_roles(parent["id"], [{"id": "support-leads", "name": "support-leads"}])
    client.get(sign_in_at_realm(start(client), "alice"))
    alice = User.objects.get(username="alice")
    assert Membership.objects.get(user=alice, team=other_team, source="sso").role == "owner"

    assert sync_directory() == {"ok": True, "error": "", "deactivated": 0, "changed": 0}
    assert Membership.objects.filter(user=alice, team=other_team).exists()

    keycloak.delete_group_realm_roles(parent["id"], [{"id": "support-leads", "name": "support-leads"}])
    assert sync_directory() == {"ok": True, "error": "", "deactivated": 0, "changed": 1}
    assert not Membership.objects.filter(user=alice, team=other_team).exists()


def test_a_role_held_directly_is_kept_by_the_sync(client, realm):
    SsoMappingRule.objects.create(kind="realm_role", value="portfolio-admin", org_role="admin")
    client.get(sign_in_at_realm(start(client), "bob"))
    bob = User.objects.get(username="bob")
    assert OrgRoleGrant.objects.get(user=bob, role="admin").source == "sso"
    assert sync_directory() == {"ok": True, "error": "", "deactivated": 0, "changed": 0}
    assert OrgRoleGrant.objects.filter(user=bob, role="admin").exists()


def test_the_last_admin_disabled_in_keycloak_is_deactivated_all_the_same(client, realm, keycloak):
    """Bob is the only active platform admin (by a realm role), and leaves: disabled in Keycloak. The sync
    used to keep him, to keep an admin, and with him his personal token (a year of admin rights) and his
    browser sessions; the directory's word stands, and the run says the organisation has no admin now."""
    SsoMappingRule.objects.create(kind="realm_role", value="portfolio-admin", org_role="admin")
    client.get(sign_in_at_realm(start(client), "bob"))
    bob = User.objects.get(username="bob")
    User.objects.exclude(pk=bob.pk).update(is_active=False)  # the bootstrap admin, retired as advised
    OrgRoleGrant.objects.exclude(user=bob).delete()
    _, token = personal_tokens.create_personal_token(actor=actor_for(bob), name="ci")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200

    keycloak.update_user(USERS["bob"]["sub"], {"enabled": False})
    outcome = sync_directory()

    assert outcome["deactivated"] == 1 and "was the last active platform admin" in outcome["error"]
    bob.refresh_from_db()
    assert not bob.is_active
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    assert client.get("/").status_code == 302, "his browser session ended"
    assert keycloak_audit("user.deactivate").get().after["left_without_an_active_admin"] is True

"""Keycloak lists users and a group's members by position (``first``/``max``, by user name), a hundred at a
time: someone deleted between two pages shifts the next one, and the person after them is left out. The sync
takes nobody for gone, nor for out of a group, on such a listing alone: it looks them up on their own first.
The realm here answers python-keycloak's requests as Keycloak would (``Realm.raw_get``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from keycloak import KeycloakAdmin

from portfolio.accounts import personal_tokens
from portfolio.accounts.models import ExternalIdentity, Membership, SsoMappingRule
from portfolio.accounts.sso import directory, sync
from tests.accounts.sso_stand_in import ISSUER
from tests.accounts.sso_stand_in import oidc as oidc  # noqa: F401 - the fixture
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db
User = get_user_model()
SYNC = {"client_id": "portfolio-sync", "client_secret": "x" * 20, "interval": 300}
GROUP = "/customer-ops/support-ai"
ZED = "sub-100"  # a hundred users sort before zed's name in Keycloak: the second page's first


class Answer:
    """An HTTP answer, as python-keycloak reads one."""

    def __init__(self, status: int, body):
        self.status_code, self._body, self.content = status, body, b""

    def json(self):
        return self._body


class Realm:
    """Keycloak's admin API as python-keycloak's ``raw_get`` reaches it: users and a group's members listed
    by position, each user and their groups looked up on their own. ``between_pages``: what happens in
    Keycloak after the first page of a listing ("users", or a group's path) is served."""

    realm_name = "portfolio"

    def __init__(self, users: list[dict], members: dict[str, list[str]] | None = None, between_pages=None):
        self.users = users  # sorted by user name, as Keycloak lists them
        self.members = members or {}  # group path -> member ids, in the same order
        self.between_pages = dict(between_pages or {})
        self.looked_up: list[str] = []

    def _page(self, listing: str, items: list, query: dict) -> list:
        first, count = int(query["first"]), int(query["max"])
        page = items[first : first + count]
        if first == 0 and listing in self.between_pages:
            self.between_pages.pop(listing)()
        return page

    def raw_get(self, url: str, **query):
        path = url.removeprefix(f"admin/realms/{self.realm_name}/").split("/")
        by_id = {user["id"]: user for user in self.users}
        if path == ["users"]:
            return Answer(200, [dict(user) for user in self._page("users", self.users, query)])
        if path[0] == "users":
            self.looked_up.append(path[1])
        if path[0] == "users" and path[1] not in by_id:
            return Answer(404, {"error": "User not found"})
        if path[0] == "users" and len(path) == 2:
            return Answer(200, dict(by_id[path[1]]))
        if path[0] == "users" and path[2] == "groups":
            held = [group for group, ids in self.members.items() if path[1] in ids]
            return Answer(200, [{"id": group, "path": group} for group in held])
        if path[0] == "group-by-path":
            return Answer(200, {"id": "/" + "/".join(path[1:])})
        if path[0] == "groups" and path[-1] == "members":
            group = "/".join(path[1:-1])
            return Answer(200, [dict(by_id[i]) for i in self._page(group, self.members[group], query)])
        raise AssertionError(url)


def realm_users(count: int = 150) -> list[dict]:
    return [{"id": f"sub-{i:03}", "username": f"user{i:03}", "enabled": True} for i in range(count)]


def signed_in_long_ago(username: str, subject: str):
    user = User.objects.create_user(username=username)
    ExternalIdentity.objects.create(
        user=user,
        issuer=ISSUER,
        subject=subject,
        username=username,
        created_at=timezone.now() - timedelta(days=1),
        claims_issued_at=timezone.now() - timedelta(hours=1),
    )
    return user


def synced(oidc, monkeypatch, realm: Realm):
    monkeypatch.setattr(directory, "_admin", lambda *args: KeycloakAdmin(connection=realm))
    run = sync.run_once(oidc, SYNC)
    assert run.ok, run.error
    return run


def test_someone_a_shifted_page_of_users_skipped_is_not_deactivated(oidc, monkeypatch):
    zed = signed_in_long_ago("zed", ZED)
    personal_tokens.create_personal_token(actor=actor_for(zed), name="ci")
    users = realm_users()
    realm = Realm(users, between_pages={"users": lambda: users.pop(10)})

    run = synced(oidc, monkeypatch, realm)

    zed.refresh_from_db()
    assert zed.is_active and run.deactivated == 0
    assert not zed.personal_tokens.filter(revoked_at__isnull=False).exists()
    assert realm.looked_up == [ZED], "only the person the listing left out is looked up"


def test_someone_not_listed_is_deactivated_once_keycloak_says_they_are_deleted_or_disabled(oidc, monkeypatch):
    deleted = signed_in_long_ago("deleted", "sub-deleted")  # not in the realm any more
    disabled = signed_in_long_ago("disabled", ZED)
    users = realm_users()
    users[100]["enabled"] = False  # and skipped by a shifted page
    realm = Realm(users, between_pages={"users": lambda: users.pop(10)})

    run = synced(oidc, monkeypatch, realm)

    deleted.refresh_from_db()
    disabled.refresh_from_db()
    assert run.deactivated == 2 and not deleted.is_active and not disabled.is_active
    assert sorted(realm.looked_up) == [ZED, "sub-deleted"]


def test_a_member_a_shifted_page_of_the_group_skipped_keeps_the_team(oidc, monkeypatch, team):
    SsoMappingRule.objects.create(kind="group", value=GROUP, team=team, team_role="developer")
    zed = signed_in_long_ago("zed", ZED)
    Membership.objects.create(user=zed, team=team, role="developer", source="sso")
    users = realm_users()
    members = [user["id"] for user in users]
    # Someone before zed leaves the group while its members are listed.
    realm = Realm(users, {GROUP: members}, between_pages={GROUP: lambda: members.remove("sub-010")})

    run = synced(oidc, monkeypatch, realm)

    assert Membership.objects.filter(user=zed, team=team, source="sso").exists()
    assert run.memberships_changed == 0 and realm.looked_up == [ZED]


def test_a_member_removed_from_the_group_loses_the_team_once_their_own_groups_say_so(oidc, monkeypatch, team):
    SsoMappingRule.objects.create(kind="group", value=GROUP, team=team, team_role="developer")
    zed = signed_in_long_ago("zed", ZED)
    Membership.objects.create(user=zed, team=team, role="developer", source="sso")
    users = realm_users()
    realm = Realm(users, {GROUP: [user["id"] for user in users if user["id"] != ZED]})

    run = synced(oidc, monkeypatch, realm)

    assert not Membership.objects.filter(user=zed, team=team).exists()
    assert run.memberships_changed == 1 and realm.looked_up == [ZED]

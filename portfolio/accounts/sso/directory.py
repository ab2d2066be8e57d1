"""Reading the realm's directory through Keycloak's admin REST API (python-keycloak's ``KeycloakAdmin``),
with a service-account client that holds read-only realm rights (``view-users``).

Only what the mapping rules can use is read: every user (id, name, enabled), and the members of each group
path, realm role and client role a rule names. That is one request per hundred users plus one per named
group or role, however many groups a person is in. Reading is all or nothing: any failure raises
``Unavailable`` and the caller changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakError

from portfolio.accounts.sso.client import TIMEOUT_SECONDS
from portfolio.accounts.sso.config import OidcConfig

NOT_FOUND = 404


class Unavailable(Exception):
    """The directory could not be read in full; the message says why (never a secret)."""


@dataclass(frozen=True)
class Wanted:
    """The group paths, realm roles and client roles (of this platform's client) the rules name."""

    groups: frozenset[str] = frozenset()
    realm_roles: frozenset[str] = frozenset()
    client_roles: frozenset[str] = frozenset()


@dataclass
class Directory:
    """The realm's users by id (the ``sub`` of their tokens), and who holds each wanted group or role."""

    enabled: dict[str, bool] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    realm_roles: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    client_roles: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def claims_of(self, subject: str, client_id: str) -> dict[str, Any]:
        """What a token of this user would say about the wanted groups and roles, shaped as Keycloak's
        claims, so that the mapping rules apply alike at sign-in and at sync."""

        def held(by_name: dict[str, set[str]]) -> list[str]:
            return sorted(name for name, holders in by_name.items() if subject in holders)

        return {
            "sub": subject,
            "groups": held(self.groups),
            "realm_access": {"roles": held(self.realm_roles)},
            "resource_access": {client_id: {"roles": held(self.client_roles)}},
        }


def _admin(config: OidcConfig, client_id: str, client_secret: str) -> KeycloakAdmin:
    connection = KeycloakOpenIDConnection(
        server_url=config.server_url,
        realm_name=config.realm,
        client_id=client_id,
        client_secret_key=client_secret,
        grant_type="client_credentials",
        timeout=TIMEOUT_SECONDS,
    )
    return KeycloakAdmin(connection=connection)


def _ids(members: list[dict[str, Any]]) -> set[str]:
    return {str(member["id"]) for member in members}


def _members_or_none(read) -> set[str]:
    """The ids ``read()`` lists; none when the group or role does not exist (any other error propagates)."""
    try:
        return _ids(read())
    except KeycloakError as exc:
        if getattr(exc, "response_code", None) == NOT_FOUND:
            return set()
        raise


def read(config: OidcConfig, *, client_id: str, client_secret: str, wanted: Wanted) -> Directory:
    """The directory as the rules need it, read in full, or ``Unavailable``."""
    directory = Directory()
    try:
        admin = _admin(config, client_id, client_secret)
        for user in admin.get_users({"briefRepresentation": True}):
            directory.enabled[str(user["id"])] = bool(user.get("enabled", True))
        for path in sorted(wanted.groups):

            def group_members(path=path) -> list[dict[str, Any]]:
                group = admin.get_group_by_path(path.lstrip("/"))
                return admin.get_group_members(group["id"], {"briefRepresentation": True})

            directory.groups[path] = _members_or_none(group_members)
        for role in sorted(wanted.realm_roles):
            directory.realm_roles[role] = _members_or_none(
                lambda role=role: admin.get_realm_role_members(role, {"briefRepresentation": True})
            )
        if wanted.client_roles:
            client_uuid = admin.get_client_id(config.client_id)
            for role in sorted(wanted.client_roles):
                directory.client_roles[role] = (
                    _members_or_none(lambda role=role: admin.get_client_role_members(client_uuid, role))
                    if client_uuid
                    else set()
                )
    except KeycloakError as exc:
        code = getattr(exc, "response_code", None)
        raise Unavailable(
            f"Keycloak's admin API refused the sync ({code}): check the sync client's rights (view-users)."
            if code in (401, 403)
            else f"Keycloak's admin API could not be read ({code or type(exc).__name__})."
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise Unavailable(
            f"Keycloak's admin API answered something unexpected ({type(exc).__name__})."
        ) from exc
    if not directory.enabled:
        # An empty directory is far likelier a misconfigured realm or client than an empty company: acting on
        # it would deactivate everyone.
        raise Unavailable("Keycloak's admin API listed no users; nothing was changed.")
    return directory

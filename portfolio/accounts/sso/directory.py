"""Reading the realm's directory through Keycloak's admin REST API (python-keycloak's ``KeycloakAdmin``),
with a service-account client that holds read-only realm rights (``view-users``, and ``view-clients`` to find
this platform's client when a rule names one of its roles: without it Keycloak lists no client, not a 403).

Only what the mapping rules can use is read: every user (id, name, enabled), the members of each group
path a rule names, and, when a rule names a role, the effective roles of each person who has signed in here
(as their tokens carry them). That is one request per hundred users, one per named group, and one or two
per signed-in person when rules name roles. Reading is all or nothing: any failure raises
``Unavailable`` and the caller changes nothing. A directory is as of the time its reading ended
(``read_at``): a change made while it was read may be in it, so only a token issued after that may know
better. Its users were listed when the reading began (``started_at``): someone new since is not listed.

Keycloak lists users and a group's members by position, a hundred at a time: a user deleted between two pages
shifts the next one, and someone after them is left out of the listing. So nobody is taken for gone, nor for
out of a group, on a listing's word alone: each person at stake (active here) the listing leaves out is looked
up on their own (``gone`` if Keycloak no longer knows them), and so are the groups of one a group's listing
leaves out while its rule gives them something they hold. Someone neither listed nor gone is left as they are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from django.utils import timezone
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
    """The realm's users by id (the ``sub`` of their tokens), and who holds each wanted group or role, as
    of ``read_at``, when the reading ended (a change made while it was read may be in it, so no earlier time
    is safe), the users as listed at ``started_at``, before the first request."""

    started_at: datetime = field(default_factory=timezone.now)
    read_at: datetime = field(default_factory=timezone.now)
    enabled: dict[str, bool] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # looked up on their own: Keycloak knows them no more (404)
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


def _read_roles(
    admin: KeycloakAdmin, config: OidcConfig, directory: Directory, wanted: Wanted, subjects: Iterable[str]
) -> None:
    """Who of ``subjects`` holds each wanted role, as their tokens would say: effective roles (their own,
    their groups' and their parent groups', and what composite roles contain), one request per person
    and kind of role. Keycloak's ``/roles/{name}/users`` lists direct holders only: read from it, a role
    given through a group would be gained at each sign-in and lost at the next sync."""
    client_uuid = admin.get_client_id(config.client_id) if wanted.client_roles else None
    if wanted.client_roles and not client_uuid:
        # Read as nobody holding them, every sync would take what client-role rules gave (back at sign-in).
        raise Unavailable(
            f"Keycloak's admin API did not show the client {config.client_id}, whose roles the rules name: "
            "give the sync client's service account realm-management view-clients."
        )
    for subject in sorted(subjects):
        if not directory.enabled.get(subject):
            continue  # disabled or not listed: nothing of theirs is applied
        try:
            if wanted.realm_roles:
                for role in admin.get_composite_realm_roles_of_user(subject, brief_representation=True):
                    if role["name"] in wanted.realm_roles:
                        directory.realm_roles[role["name"]].add(subject)
            if client_uuid:
                held = admin.get_composite_client_roles_of_user(
                    subject, client_uuid, brief_representation=True
                )
                for role in held:
                    if role["name"] in wanted.client_roles:
                        directory.client_roles[role["name"]].add(subject)
        except KeycloakError as exc:
            if getattr(exc, "response_code", None) != NOT_FOUND:
                raise
            directory.enabled.pop(subject)  # deleted since the listing: gone
            directory.gone.add(subject)


def _confirm_unlisted(admin: KeycloakAdmin, directory: Directory, at_stake: Iterable[str]) -> None:
    """Each person at stake the listing left out, looked up on their own: gone (404) or disabled is what
    deactivates; found enabled, a shifted page skipped them, and they stay neither listed nor gone."""
    for subject in sorted(set(at_stake) - set(directory.enabled)):
        try:
            user = admin.get_user(subject)
        except KeycloakError as exc:
            if getattr(exc, "response_code", None) != NOT_FOUND:
                raise
            directory.gone.add(subject)
            continue
        if not user.get("enabled", True):
            directory.enabled[subject] = False


def _confirm_memberships(admin: KeycloakAdmin, directory: Directory, at_stake: dict[str, set[str]]) -> None:
    """Each enabled person a group's listing left out while its rule gives them something they hold: their
    own groups read (one request), which then decide every wanted group of theirs."""
    for subject, paths in sorted(at_stake.items()):
        listed = [path for path in sorted(paths) if path in directory.groups]
        if not directory.enabled.get(subject) or all(subject in directory.groups[path] for path in listed):
            continue
        try:
            held = {group["path"] for group in admin.get_user_groups(subject, brief_representation=True)}
        except KeycloakError as exc:
            if getattr(exc, "response_code", None) != NOT_FOUND:
                raise
            directory.enabled.pop(subject)  # deleted since the listing: gone
            directory.gone.add(subject)
            continue
        for path, members in directory.groups.items():
            if path in held:
                members.add(subject)
            else:
                members.discard(subject)


def read(
    config: OidcConfig,
    *,
    client_id: str,
    client_secret: str,
    wanted: Wanted,
    subjects: Iterable[str] = (),
    at_stake: dict[str, set[str]] | None = None,
) -> Directory:
    """The directory as the rules need it, read in full, or ``Unavailable``; roles are read for
    ``subjects`` only (the people who have signed in here). ``at_stake``: the people active here, each with
    the group paths whose rules give them something they hold, confirmed on their own where a listing leaves
    them out (see the module's docstring)."""
    at_stake = at_stake or {}
    directory = Directory()  # started now, before anything is read
    try:
        admin = _admin(config, client_id, client_secret)
        for user in admin.get_users({"briefRepresentation": True}):
            directory.enabled[str(user["id"])] = bool(user.get("enabled", True))
        if not directory.enabled:
            # An empty listing is far likelier a misconfigured realm or client than an empty company: acting on
            # it would deactivate everyone.
            raise Unavailable("Keycloak's admin API listed no users; nothing was changed.")
        _confirm_unlisted(admin, directory, at_stake)
        for path in sorted(wanted.groups):

            def group_members(path=path) -> list[dict[str, Any]]:
                # python-keycloak puts the path into the URL as given: a "#" or "?" in a group's name cut it
                # there, and another group's members were read.
                group = admin.get_group_by_path(quote(path.lstrip("/"), safe="/"))
                return admin.get_group_members(group["id"], {"briefRepresentation": True})

            directory.groups[path] = _members_or_none(group_members)
        _confirm_memberships(admin, directory, at_stake)
        if wanted.realm_roles or wanted.client_roles:
            _read_roles(admin, config, directory, wanted, subjects)
    except KeycloakError as exc:
        code = getattr(exc, "response_code", None)
        raise Unavailable(
            f"Keycloak's admin API refused the sync ({code}): check the sync client's rights "
            "(view-users; view-clients for client-role rules)."
            if code in (401, 403)
            else f"Keycloak's admin API could not be read ({code or type(exc).__name__})."
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise Unavailable(
            f"Keycloak's admin API answered something unexpected ({type(exc).__name__})."
        ) from exc
    directory.read_at = timezone.now()
    return directory

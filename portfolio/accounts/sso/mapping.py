"""Single sign-on's mapping rules applied to one person: their Keycloak groups and roles decide their teams,
organisation roles and department roles here.

Contract: ``apply`` makes the person's rows whose source is ``sso`` exactly what the rules give for their
claims: it creates what is missing, changes roles, and removes what no rule gives any more (a leaver loses
access at their next sign-in, or at the next directory sync). A row granted here (source ``local``) that a
rule also gives is taken over (it becomes ``sso``, and goes when the group goes); local rows no rule gives
are left alone. Every change is one audit row, in the caller's transaction, with ``"source": "sso"`` in its
``after``. The directory is authoritative: unlike a local edit, a change here may leave a team without an
owner or the organisation without an admin (a break-glass superuser stays one whatever the rules say).

The claims are an ID token's or an access token's (``groups``, ``realm_access.roles``,
``resource_access.<client_id>.roles``), or the same shape built from Keycloak's admin API by a sync.

A claim left out is not an empty one. Keycloak's default ``roles`` client scope puts ``realm_access`` and
``resource_access`` into the access token only: an ID token carries them only when the client has mappers
that add them (the realm in ``deploy/keycloak`` has both). So ``apply`` judges each kind of rule (groups,
realm roles, client roles) only by claims that carry that kind: where the claim is absent altogether (no
``groups``, no ``realm_access``, no ``resource_access``), it neither gives nor takes what that kind's rules
give, and a row from single sign-on that such a rule could have given is left as it is (a team role is
not lowered below it); the directory sync, whose claims always carry every kind, then decides. A
``resource_access`` without this client's entry does speak: its holder has none of this client's roles.
(A browser sign-in first takes the claims its ID token leaves out from its verified access token:
``sign_in_claims``.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, NamedTuple

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q

from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import GrantSource, SsoSourceKind, TeamRole
from portfolio.accounts.models import DepartmentRole, Membership, OrgRoleGrant, SsoMappingRule, Team
from portfolio.audit import services as audit

User = get_user_model()
SSO = GrantSource.SSO
SYSTEM = "keycloak"  # the actor of changes the directory makes: "system:keycloak" in the audit trail
# When two rules give one team, the stronger role wins.
TEAM_ROLE_STRENGTH: dict[str, int] = {
    TeamRole.VIEWER: 0,
    TeamRole.DEVELOPER: 1,
    TeamRole.ENGINEER: 2,
    TeamRole.OWNER: 3,
}


class TeamGrant(NamedTuple):
    team_id: int
    role: str


class OrgGrant(NamedTuple):
    role: str


class DepartmentGrant(NamedTuple):
    department_id: int
    role: str


Grant = TeamGrant | OrgGrant | DepartmentGrant


@dataclasses.dataclass
class Summary:
    """What ``apply`` changed, one line per change (the audit rows say it in full)."""

    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed)


def system_actor(actor: Actor | None = None) -> Actor:
    """``system:keycloak``, keeping the request id and address of the sign-in that brought the claims."""
    if actor is None:
        return Actor.for_system(SYSTEM)
    return dataclasses.replace(actor, user=None, token_id=None, api_key_id=None, system=SYSTEM)


def normalise_group(path: str) -> str:
    """A group's full path with its leading slash (Keycloak's group mapper may leave it out)."""
    return "/" + path.strip().lstrip("/")


def _strings(value: Any) -> set[str]:
    if not isinstance(value, list | tuple | set | frozenset):
        return set()
    return {item for item in value if isinstance(item, str) and item.strip()}


def _roles(container: Any) -> set[str]:
    return _strings(container.get("roles")) if isinstance(container, dict) else set()


# The claim that speaks of each kind of rule: absent, the claims say nothing of that kind.
CLAIM_OF_KIND: dict[str, str] = {
    SsoSourceKind.GROUP: "groups",
    SsoSourceKind.REALM_ROLE: "realm_access",
    SsoSourceKind.CLIENT_ROLE: "resource_access",
}


def silent_kinds(claims: dict[str, Any]) -> set[str]:
    """The kinds of rule the claims say nothing about (their claim left out, not empty)."""
    return {kind for kind, claim in CLAIM_OF_KIND.items() if claim not in claims}


def sources(claims: dict[str, Any], client_id: str) -> dict[str, set[str]]:
    """The groups, realm roles and this client's roles the claims carry, by rule kind."""
    resource_access = claims.get("resource_access")
    client = resource_access.get(client_id) if isinstance(resource_access, dict) else None
    return {
        SsoSourceKind.GROUP: {normalise_group(group) for group in _strings(claims.get("groups"))},
        SsoSourceKind.REALM_ROLE: _roles(claims.get("realm_access")),
        SsoSourceKind.CLIENT_ROLE: _roles(client),
    }


def desired(claims: dict[str, Any], client_id: str) -> set[Grant]:
    """What the rules give to the holder of these claims: at most one role per team (the strongest)."""
    matching = Q()
    for kind, values in sources(claims, client_id).items():
        if values:
            matching |= Q(kind=kind, value__in=sorted(values))
    if not matching:
        return set()
    grants: set[Grant] = set()
    teams: dict[int, str] = {}
    for rule in SsoMappingRule.objects.filter(matching):
        if rule.team_id is not None:
            held = teams.get(rule.team_id)
            if held is None or TEAM_ROLE_STRENGTH[rule.team_role] > TEAM_ROLE_STRENGTH[held]:
                teams[rule.team_id] = rule.team_role
        elif rule.org_role:
            grants.add(OrgGrant(rule.org_role))
        elif rule.department_id is not None:
            grants.add(DepartmentGrant(rule.department_id, rule.department_role))
    return grants | {TeamGrant(team_id, role) for team_id, role in teams.items()}


def unknown(claims: dict[str, Any]) -> set[Grant]:
    """What the rules of the kinds the claims are silent about could give: neither given nor taken."""
    silent = silent_kinds(claims)
    if not silent:
        return set()
    grants: set[Grant] = set()
    for rule in SsoMappingRule.objects.filter(kind__in=sorted(silent)):
        if rule.team_id is not None:
            grants.add(TeamGrant(rule.team_id, rule.team_role))
        elif rule.org_role:
            grants.add(OrgGrant(rule.org_role))
        elif rule.department_id is not None:
            grants.add(DepartmentGrant(rule.department_id, rule.department_role))
    return grants


@transaction.atomic
def apply(user, claims: dict[str, Any], *, actor: Actor, client_id: str) -> Summary:
    """Make the user's single sign-on memberships and roles what the rules give for ``claims`` (see the
    module's contract), leaving what the claims cannot speak to (``unknown``). Idempotent: a second call
    with the same claims changes nothing and audits nothing."""
    user = User.objects.select_for_update().get(pk=user.pk)  # one apply at a time per person
    wanted, left = desired(claims, client_id), unknown(claims)
    summary = Summary()
    teams = {g.team_id: g.role for g in wanted if isinstance(g, TeamGrant)}
    _apply_teams(user, teams, left, actor, summary)
    _apply_org_roles(user, {g.role for g in wanted if isinstance(g, OrgGrant)}, left, actor, summary)
    departments = {(g.department_id, g.role) for g in wanted if isinstance(g, DepartmentGrant)}
    _apply_department_roles(user, departments, left, actor, summary)
    return summary


def _with_source(snapshot: dict, row) -> dict:
    return {**snapshot, "source": row.source}


def _apply_teams(user, wanted: dict[int, str], left: set[Grant], actor: Actor, summary: Summary) -> None:
    # The teams first, in id order, then the memberships: the order in which a person removing or demoting
    # an owner takes them (``services.remove_member``), so the two wait for each other, never deadlock.
    held = set(Membership.objects.filter(user=user).values_list("team_id", flat=True))
    list(
        Team.objects.select_for_update(no_key=True)
        .filter(pk__in=held | set(wanted))
        .order_by("pk")
        .values_list("pk")
    )
    rows = {
        m.team_id: m
        for m in Membership.objects.select_for_update(of=("self",))
        .filter(user=user)
        .select_related("team", "user")
    }
    for team_id, row in rows.items():
        if row.source == SSO and TeamGrant(team_id, row.role) in left:
            given = wanted.get(team_id)
            if given is None or TEAM_ROLE_STRENGTH[row.role] > TEAM_ROLE_STRENGTH[given]:
                wanted[team_id] = row.role  # a rule the claims are silent about may give it
    for team_id, role in sorted(wanted.items()):
        membership = rows.get(team_id)
        if membership is None:
            membership = Membership.objects.create(user=user, team_id=team_id, role=role, source=SSO)
            audit.record(
                actor, "membership.create", membership, after=_with_source(membership.snapshot(), membership)
            )
            summary.created.append(f"member of {membership.team.slug} as {role}")
        elif membership.role != role or membership.source != SSO:
            before = _with_source(membership.snapshot(), membership)
            membership.role, membership.source = role, SSO
            membership.save(update_fields=["role", "source"])
            after = _with_source(membership.snapshot(), membership)
            audit.record(actor, "membership.update", membership, before=before, after=after)
            summary.updated.append(f"member of {membership.team.slug} as {role}")
    for team_id, membership in rows.items():
        if membership.source == SSO and team_id not in wanted:
            before = _with_source(membership.snapshot(), membership)
            # The team's keys they made stay live, as at a removal by an owner (services.remove_member).
            from portfolio.accounts.services import LIVE_KEYS_OF

            live = [entry for find in LIVE_KEYS_OF for entry in find(membership)[0]]
            after = {"source": SSO, "live_api_keys": live}
            audit.record(actor, "membership.delete", membership, before=before, after=after)
            membership.delete()
            summary.removed.append(f"member of {membership.team.slug}")


def _org_roles(user) -> list[str]:
    return sorted(OrgRoleGrant.objects.filter(user=user).values_list("role", flat=True))


def _org_change(actor: Actor, action: str, user, role: str, before: dict) -> None:
    after = {"user": user.username, "role": role, "org_roles": _org_roles(user), "source": SSO}
    audit.record(actor, action, user, before=before, after=after, object_repr=user.username)


def _apply_org_roles(user, wanted: set[str], left: set[Grant], actor: Actor, summary: Summary) -> None:
    rows = {
        grant.role: grant for grant in OrgRoleGrant.objects.select_for_update(of=("self",)).filter(user=user)
    }
    wanted = wanted | {role for role, grant in rows.items() if grant.source == SSO and OrgGrant(role) in left}
    for role in sorted(wanted):
        grant = rows.get(role)
        before = {"user": user.username, "org_roles": _org_roles(user)}
        if grant is None:
            OrgRoleGrant.objects.create(user=user, role=role, source=SSO)
        elif grant.source != SSO:
            before["source"] = grant.source  # granted here, now given by the rules
            OrgRoleGrant.objects.filter(pk=grant.pk).update(source=SSO)
        else:
            continue
        _org_change(actor, "org_role.grant", user, role, before)
        (summary.created if grant is None else summary.updated).append(f"organisation role {role}")
    for role, grant in sorted(rows.items()):
        if grant.source == SSO and role not in wanted:
            before = {"user": user.username, "org_roles": _org_roles(user), "source": SSO}
            grant.delete()
            _org_change(actor, "org_role.revoke", user, role, before)
            summary.removed.append(f"organisation role {role}")


def _apply_department_roles(
    user, wanted: Iterable[tuple[int, str]], left: set[Grant], actor: Actor, summary: Summary
) -> None:
    rows = {
        (grant.department_id, grant.role): grant
        for grant in DepartmentRole.objects.select_for_update(of=("self",))
        .filter(user=user)
        .select_related("department", "user")
    }
    wanted = set(wanted) | {
        key for key, grant in rows.items() if grant.source == SSO and DepartmentGrant(*key) in left
    }
    for key in sorted(wanted):
        grant = rows.get(key)
        if grant is None:
            grant = DepartmentRole.objects.create(user=user, department_id=key[0], role=key[1], source=SSO)
            after = _with_source(grant.snapshot(), grant)
            audit.record(actor, "department_role.grant", grant, after=after)
            summary.created.append(f"{key[1]} of {grant.department.cost_center}")
        elif grant.source != SSO:
            before = _with_source(grant.snapshot(), grant)
            grant.source = SSO
            grant.save(update_fields=["source"])
            after = _with_source(grant.snapshot(), grant)
            audit.record(actor, "department_role.grant", grant, before=before, after=after)
            summary.updated.append(f"{key[1]} of {grant.department.cost_center}")
    for key, grant in rows.items():
        if grant.source == SSO and key not in wanted:
            before = _with_source(grant.snapshot(), grant)
            audit.record(actor, "department_role.revoke", grant, before=before, after={"source": SSO})
            grant.delete()
            summary.removed.append(f"{key[1]} of {grant.department.cost_center}")

"""Every change to the organisation goes through here, with its audit row in the same transaction."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from importlib import import_module

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.text import slugify

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import DepartmentRoleName, GrantSource, OrgRole, TeamRole
from portfolio.accounts.models import (
    Department,
    DepartmentRole,
    Membership,
    OrgRoleGrant,
    PersonalToken,
    Team,
)
from portfolio.accounts.sso.config import source_label
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid

User = get_user_model()
# Team addresses that would collide with UI routes under /teams/.
RESERVED_TEAM_SLUGS = frozenset({"new"})


def _validated(obj, *, exclude: list[str] | None = None):
    try:
        # Uniqueness is left to the database, whose IntegrityError becomes a Conflict (race-free).
        obj.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        first = next(iter(fields.items()))
        raise Invalid(f"{first[0]}: {first[1][0]}", fields=fields) from None
    return obj


def _save_new(obj, conflict: str):
    try:
        with transaction.atomic():
            obj.save(force_insert=True)
    except IntegrityError:
        raise Conflict(conflict) from None
    return obj


def _refuse_sso(what: str) -> Conflict:
    """The refusal of a local change to a row the single sign-on mapping rules give (they alone change it)."""
    return Conflict(
        f"{what} comes from {source_label()}: change the person's groups or roles there, "
        "or the single sign-on mapping rules.",
        code="sso_managed",
    )


# --- Departments and teams -------------------------------------------------------------------------
@transaction.atomic
def create_department(*, actor: Actor, name: str, cost_center: str) -> Department:
    gate.require(actor, "department.create")
    department = _validated(Department(name=name.strip(), cost_center=cost_center.strip().upper()))
    _save_new(
        department,
        f"A department named {department.name!r} or with cost center {department.cost_center} already exists.",
    )
    audit.record(actor, "department.create", department, after=department.snapshot())
    return department


@transaction.atomic
def update_department(*, actor: Actor, department: Department, name: str, cost_center: str) -> Department:
    gate.require(actor, "department.change", department)
    # The row as stored now, locked, into the caller's object: its "before" is what this change replaces, not
    # a copy read before another's change. A full lock, as a renaming save takes (a unique column) and as
    # ``billing.statements`` takes it: a rename waits for a closing statement, and it for the rename.
    department.refresh_from_db(from_queryset=Department.objects.select_for_update())
    before = department.snapshot()
    department.name, department.cost_center = name.strip(), cost_center.strip().upper()
    _validated(department, exclude=["name", "cost_center"] if before == department.snapshot() else None)
    try:
        with transaction.atomic():
            department.save(update_fields=["name", "cost_center"])
    except IntegrityError:
        raise Conflict("Another department has that name or cost center.") from None
    audit.record(actor, "department.update", department, before=before, after=department.snapshot())
    return department


@transaction.atomic
def create_team(
    *, actor: Actor, department: Department, name: str, slug: str = "", description: str = ""
) -> Team:
    gate.require(actor, "team.create")
    slug = slugify(slug or name)[:60]
    if not slug:
        raise Invalid(
            "name: A team needs a name with at least one letter or digit.", fields={"name": ["Required."]}
        )
    if slug in RESERVED_TEAM_SLUGS:
        raise Invalid(
            f"slug: {slug!r} is reserved by the web UI; choose another address.",
            fields={"slug": ["Reserved."]},
        )
    team = _validated(
        Team(department=department, name=name.strip(), slug=slug, description=description.strip())
    )
    _save_new(team, f"A team named {team.name!r} or with the address {slug!r} already exists.")
    audit.record(actor, "team.create", team, after=team.snapshot())
    return team


@transaction.atomic
def update_team(*, actor: Actor, team: Team, name: str, description: str) -> Team:
    gate.require(actor, "team.change", team)
    # The row as stored now, locked, into the caller's object: its "before" is what this change replaces, not
    # a copy read before another's change. A full lock, as a renaming save takes (its name is in a unique
    # key), taken first rather than upgraded from a no-key one; nothing else is locked here.
    team.refresh_from_db(from_queryset=Team.objects.select_for_update())
    before = team.snapshot()
    team.name, team.description = name.strip(), description.strip()
    _validated(team, exclude=["slug", "department"])
    try:
        with transaction.atomic():
            team.save(update_fields=["name", "description"])
    except IntegrityError:
        raise Conflict("Another team in this department has that name.") from None
    audit.record(actor, "team.update", team, before=before, after=team.snapshot())
    return team


# --- Department roles ------------------------------------------------------------------------------
def _department_role(role: str) -> str:
    if role not in DepartmentRoleName.values:
        raise Invalid(
            f"role: {role!r} is not a department role ({', '.join(DepartmentRoleName.values)}).",
            fields={"role": ["Unknown role."]},
        )
    return role


@transaction.atomic
def grant_department_role(
    *, actor: Actor, user, department: Department, role: str = DepartmentRoleName.MANAGER
) -> DepartmentRole:
    """Make ``user`` a manager (the one department role) of ``department``: platform admins only."""
    gate.require(actor, "department.change", department)
    role = _department_role(role)
    if not user.is_active:
        raise Invalid("username: The account is deactivated.", fields={"username": ["Deactivated."]})
    grant = DepartmentRole(user=user, department=department, role=role)
    _save_new(grant, f"{user.get_username()} is already {role} of {department.name}.")
    audit.record(actor, "department_role.grant", grant, after=grant.snapshot())
    return grant


@transaction.atomic
def revoke_department_role(
    *, actor: Actor, user, department: Department, role: str = DepartmentRoleName.MANAGER
) -> None:
    """Take the department role back; revoking one the user does not hold is a no-op, not audited."""
    gate.require(actor, "department.change", department)
    grant = (
        DepartmentRole.objects.select_for_update(of=("self",))
        .select_related("user", "department")
        .filter(user=user, department=department, role=_department_role(role))
        .first()
    )
    if grant is None:
        return
    if grant.source == GrantSource.SSO:
        raise _refuse_sso(f"{user.get_username()}'s role as {grant.role} of {department.name}")
    audit.record(actor, "department_role.revoke", grant, before=grant.snapshot())
    grant.delete()


# --- Memberships -----------------------------------------------------------------------------------
def _check_role(role: str) -> str:
    if role not in TeamRole.values:
        raise Invalid(f"role: {role!r} is not a team role ({', '.join(TeamRole.values)}).")
    return role


def _lock_for_new_membership(team: Team, user) -> None:
    """The person's row, then the team's, before their membership is added: the order in which a sign-in or
    the directory sync maps them (``sso.mapping.apply``). The insert's own reference to the person is checked
    only at commit (a deferred key), so it waited there for a sign-in holding the person, while the sign-in's
    insert waited for this uncommitted membership: a deadlock. Now one waits for the other, then finds its
    membership."""
    User.objects.select_for_update(no_key=True).filter(pk=user.pk).first()
    Team.objects.select_for_update(no_key=True).filter(pk=team.pk).first()


@transaction.atomic
def add_member(*, actor: Actor, team: Team, user, role: str) -> Membership:
    gate.require(actor, "member.manage", team)
    membership = Membership(team=team, user=user, role=_check_role(role))
    _lock_for_new_membership(team, user)
    # Read under the person's lock: a deactivation committed meanwhile is seen (the routes look up active
    # people only, before this transaction).
    if not User.objects.filter(pk=user.pk, is_active=True).exists():
        raise Invalid("username: The account is deactivated.", fields={"username": ["Deactivated."]})
    _save_new(
        membership, f"{user.get_username()} is already a member of {team.name}; change the role instead."
    )
    audit.record(actor, "membership.create", membership, after=membership.snapshot())
    return membership


def _lock_owners(membership: Membership) -> None:
    """The team's row, before the membership's: two owners leaving at once would each find the other still
    owner and leave the team with none; the second now waits for the first and finds itself the last."""
    Team.objects.select_for_update(no_key=True).filter(pk=membership.team_id).first()


def _would_leave_no_owner(membership: Membership) -> bool:
    if membership.role != TeamRole.OWNER:
        return False
    others = Membership.objects.filter(
        team_id=membership.team_id, role=TeamRole.OWNER, user__is_active=True
    ).exclude(pk=membership.pk)
    return not others.exists()  # a deactivated owner (memberships are kept) answers for nothing


def _refuse_sso_membership(membership: Membership) -> None:
    if membership.source == GrantSource.SSO:
        raise _refuse_sso(f"{membership.user.get_username()}'s membership of {membership.team.name}")


@transaction.atomic
def change_member_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    gate.require(actor, "member.manage", membership.team)
    _lock_owners(membership)
    membership = (
        Membership.objects.select_for_update(of=("self",))
        .select_related("team", "user")
        .get(pk=membership.pk)
    )
    _refuse_sso_membership(membership)
    before = membership.snapshot()
    if role != TeamRole.OWNER and _would_leave_no_owner(membership):
        raise Conflict("A team keeps at least one owner: make someone else owner first.")
    membership.role = _check_role(role)
    membership.save(update_fields=["role"])
    audit.record(actor, "membership.update", membership, before=before, after=membership.snapshot())
    return membership


# The team's API keys a member created that stay live when they leave it: ``(audit entries {key_id, name},
# labels to show)``. The gateway registers its finder (it builds on accounts, not the other way).
LIVE_KEYS_OF: list[Callable[[Membership], tuple[list[dict], list[str]]]] = []


@transaction.atomic
def remove_member(*, actor: Actor, membership: Membership) -> list[str]:
    """Removes the member and returns the names of the team's API keys they created that stay live: the
    keys are the team's and keep working (and billing the team) until an owner revokes them, so the
    removal's audit row lists them (their public ``key_id`` and name, never a secret)."""
    gate.require(actor, "member.manage", membership.team)
    _lock_owners(membership)
    membership = (
        Membership.objects.select_for_update(of=("self",))
        .select_related("team", "user")
        .get(pk=membership.pk)
    )
    _refuse_sso_membership(membership)
    if _would_leave_no_owner(membership):
        raise Conflict("A team keeps at least one owner: make someone else owner first.")
    before = membership.snapshot()
    entries: list[dict] = []
    labels: list[str] = []
    for find in LIVE_KEYS_OF:
        found, shown = find(membership)
        entries += found
        labels += shown
    audit.record(actor, "membership.delete", membership, before=before, after={"live_api_keys": entries})
    membership.delete()
    return labels


# --- Users -----------------------------------------------------------------------------------------
@transaction.atomic
def create_user(*, actor: Actor, username: str, email: str = "", org_role: str = ""):
    """A local account with a random initial password, returned once for the admin to hand over."""
    gate.require(actor, "user.manage")
    user = User(username=username.strip(), email=email.strip())
    _validated(user, exclude=["password"])
    password = secrets.token_urlsafe(15)
    user.set_password(password)
    _save_new(user, f"A user named {user.username!r} already exists.")
    after = {"username": user.username, "email": user.email}
    if org_role:
        if org_role not in OrgRole.values:
            raise Invalid(f"org_role: {org_role!r} is not an organisation role.")
        OrgRoleGrant.objects.create(user=user, role=org_role)
        after["org_role"] = org_role
    audit.record(actor, "user.create", user, after=after, object_repr=user.username)
    return user, password


def _org_roles(user) -> list[str]:
    return sorted(OrgRoleGrant.objects.filter(user=user).values_list("role", flat=True))


def user_snapshot(user) -> dict:
    return {
        "username": user.username,
        "email": user.email,
        "is_active": user.is_active,
        "org_roles": _org_roles(user),
    }


def _active_admins():
    """The active platform admins (superusers count as admins)."""
    return User.objects.filter(is_active=True).filter(Q(is_superuser=True) | Q(org_roles__role=OrgRole.ADMIN))


def active_admins_exist() -> bool:
    return _active_admins().exists()


def _is_last_active_admin(user) -> bool:
    """Whether ``user`` is the only active platform admin left."""
    admins = _active_admins()
    # Locked, so that two admins removing each other at once cannot both succeed.
    ids = set(
        User.objects.select_for_update().filter(pk__in=admins.values("pk")).values_list("pk", flat=True)
    )
    return ids == {user.pk}


@transaction.atomic
def set_org_role(*, actor: Actor, user, role: str, granted: bool) -> None:
    """Grant or revoke one organisation role, audited with the user's roles before and after."""
    gate.require(actor, "user.manage")
    if role not in OrgRole.values:
        raise Invalid(f"role: {role!r} is not an organisation role.")
    user = User.objects.select_for_update().get(pk=user.pk)
    before = {"user": user.username, "org_roles": _org_roles(user)}
    if granted:
        _, changed = OrgRoleGrant.objects.get_or_create(user=user, role=role)
        action = "org_role.grant"
    else:
        grants = OrgRoleGrant.objects.filter(user=user, role=role)
        if grants.filter(source=GrantSource.SSO).exists():
            raise _refuse_sso(f"{user.username}'s role {OrgRole(role).label.lower()}")
        if (
            role == OrgRole.ADMIN
            and not user.is_superuser
            and grants.exists()
            and _is_last_active_admin(user)
        ):
            raise Conflict(
                "The organisation keeps at least one active platform admin: make someone else admin first."
            )
        changed = grants.delete()[0] > 0
        action = "org_role.revoke"
    if changed:
        after = {"user": user.username, "role": role, "org_roles": _org_roles(user)}
        audit.record(actor, action, user, before=before, after=after, object_repr=user.username)


@transaction.atomic
def set_org_roles(*, actor: Actor, user, roles: Iterable[str]):
    """Make the user's organisation roles exactly ``roles``: one audited grant or revoke per change.
    (A Django superuser stays an admin whatever their grants: that flag is for the bootstrap account.)"""
    gate.require(actor, "user.manage")
    wanted = set(roles)
    unknown = sorted(wanted - set(OrgRole.values))
    if unknown:
        raise Invalid(
            f"roles: {unknown[0]!r} is not an organisation role.", fields={"roles": ["Unknown role."]}
        )
    # Grants first, so that swapping roles never passes through "no admin left".
    for role in sorted(wanted):
        set_org_role(actor=actor, user=user, role=role, granted=True)
    for role in sorted(set(OrgRole.values) - wanted):
        set_org_role(actor=actor, user=user, role=role, granted=False)
    user.refresh_from_db()
    return user


def _end_sessions(user) -> int:
    """Delete every stored browser session of ``user`` (Zulip's way: sessions are not indexed by user, so
    the live ones are read; an admin action, not a hot path). Even a session this misses signs no one in:
    Django's authentication refuses an inactive user on every request."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    ended = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if session.get_decoded().get("_auth_user_id") == str(user.pk):
            store(session_key=session.session_key).delete()
            ended += 1
    return ended


@transaction.atomic
def deactivate_user(*, actor: Actor, user, directory: bool = False):
    """Offboarding: the account can no longer sign in, its sessions end and its personal tokens are revoked,
    at once. Its memberships and org roles are kept for the record (and come back with a reactivation);
    the team API keys it created belong to the teams and are left to their owners. The last active platform
    admin is kept, unless the ``directory`` (the identity provider, which has the last word on who may work
    here) disabled them: their tokens and sessions must not outlive it."""
    gate.require(actor, "user.manage")
    user = User.objects.select_for_update().get(pk=user.pk)
    if actor.user is not None and actor.user.pk == user.pk:
        raise Conflict("You cannot deactivate your own account; ask another platform admin.")
    if not user.is_active:
        return user
    last_admin = _is_last_active_admin(user)
    if last_admin and not directory:
        raise Conflict(
            "The organisation keeps at least one active platform admin: make someone else admin first."
        )
    before = user_snapshot(user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    now = timezone.now()
    revoked = list(PersonalToken.objects.active().filter(user=user).values_list("key_id", flat=True))
    PersonalToken.objects.filter(user=user, key_id__in=revoked).update(revoked_at=now)
    ended = _end_sessions(user)
    after = {
        **user_snapshot(user),
        "tokens_revoked": [f"pat_{key_id}_…" for key_id in revoked],
        "sessions_ended": ended,
        # Not refused (offboarding is never blocked), but said: these teams need an owner named.
        "teams_left_without_an_active_owner": [team.slug for team in teams_without_active_owner(user)],
        **({"left_without_an_active_admin": True} if last_admin else {}),
    }
    audit.record(actor, "user.deactivate", user, before=before, after=after, object_repr=user.username)
    return user


def teams_without_active_owner(user) -> list[Team]:
    """The teams ``user`` owns where no other owner has an active account: after offboarding ``user``,
    nobody there manages members, budgets or key limits until a platform admin names an owner."""
    active_owner = Membership.objects.filter(team=OuterRef("pk"), role=TeamRole.OWNER, user__is_active=True)
    return list(
        Team.objects.filter(memberships__user=user, memberships__role=TeamRole.OWNER)
        .exclude(Exists(active_owner))
        .order_by("name")
    )


@transaction.atomic
def reactivate_user(*, actor: Actor, user):
    """The account may sign in again, with its memberships and org roles; its revoked tokens stay revoked."""
    gate.require(actor, "user.manage")
    user = User.objects.select_for_update().get(pk=user.pk)
    if user.is_active:
        return user
    before = user_snapshot(user)
    user.is_active = True
    user.save(update_fields=["is_active"])
    audit.record(
        actor, "user.reactivate", user, before=before, after=user_snapshot(user), object_repr=user.username
    )
    return user


@transaction.atomic
def change_password(*, actor: Actor, user, new_password: str) -> None:
    try:
        validate_password(new_password, user)
    except ValidationError as exc:
        raise Invalid(" ".join(exc.messages), fields={"new_password": exc.messages}) from None
    user.set_password(new_password)
    user.save(update_fields=["password"])
    audit.record(actor, "user.password_change", user, object_repr=user.username)

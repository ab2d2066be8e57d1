"""The directory sync: Keycloak's users and group memberships applied here, every ``OIDC_SYNC['interval']``.

For every person who has signed in from the realm (an ``ExternalIdentity``):
- disabled or deleted in Keycloak: deactivated here (``accounts.services.deactivate_user``: sessions ended,
  personal tokens revoked), within one interval of the change;
- otherwise: their memberships and roles made what the mapping rules give for their groups and roles, as at
  sign-in (``accounts.sso.mapping.apply``).
Every change is an audit row by ``system:keycloak``. The directory is read in full before anything changes: a
sync that cannot read Keycloak changes nothing and says so in its ``DirectorySync`` row (not ok), which the
single sign-on page shows. Each person's changes and audit rows are then one transaction of their own, taking
their identity and user, then their teams, as a sign-in does: one transaction for the whole run held every
team it had touched while it went on to the next person, and deadlocked with that person's sign-in. A person
whose changes fail is left as they were and named in the run's error; the others' stand (the run is ok, as it
changed something). A user deactivated here by an admin is left alone, and one whom Keycloak enables again is
not reactivated by the sync: an admin decides. Keycloak lists users by position, so a listing can skip
someone: only a person Keycloak says is disabled, or no longer knows when looked up on their own
(``Directory.gone``), is deactivated; one neither listed nor gone is left as they were (``directory``).

The directory is as of the time its reading ended (``Directory.read_at``: a removal made while it was read
may be in it, so a token issued during the read is older than the directory), and a person can sign in between
the read and the apply: claims issued after the read were applied already and are newer than the directory,
so that person's groups and roles are left as the sign-in made them. Someone whose first sign-in here came
after the users were listed (``Directory.started_at``) is not in the read at all (not listed is then no sign
of being gone). Otherwise the identity's ``claims_issued_at`` becomes ``read_at``, not the time of applying: a
token issued between the read and the apply is newer than the directory and may still be used.

One sync runs at a time, holding a PostgreSQL advisory lock on its own session for the whole run; one that
finds it held does nothing (the running one is reading the directory already). PostgreSQL lets go of the
lock of a worker that died (killed, out of memory, its machine lost), so a run that holds it knows every
unfinished row is a dead run's: it marks them interrupted, rather than leaving them "running" for good.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from portfolio.accounts import services
from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import GrantSource, SsoSourceKind
from portfolio.accounts.models import (
    DepartmentRole,
    DirectorySync,
    ExternalIdentity,
    Membership,
    OrgRoleGrant,
    SsoMappingRule,
)
from portfolio.accounts.sso import client, directory
from portfolio.accounts.sso import mapping as sso_mapping
from portfolio.accounts.sso.config import OidcConfig

logger = logging.getLogger("portfolio.accounts.sso.sync")
KEEP_RUNS = 100
LOCK_ID = 0x7379_6E63  # "sync": a session-level advisory lock, held for the whole run
INTERRUPTED = (
    "Interrupted: its worker stopped before it finished. What it had applied stands, though not counted "
    "here; a later sync read the directory again."
)
BUSY = "Another directory sync was running: this one did nothing."
# Keycloak's user of a client's service account. Its admin API lists users without them (GET /users, and
# since 26.7 GET /users/{id}): neither listed nor looked up, they are never taken for deleted or disabled.
SERVICE_ACCOUNT_PREFIX = "service-account-"


def wanted() -> directory.Wanted:
    """The groups and roles the mapping rules name: all the sync needs to read."""
    named: dict[str, set[str]] = {kind: set() for kind in SsoSourceKind.values}
    for kind, value in SsoMappingRule.objects.values_list("kind", "value"):
        named[kind].add(value)
    return directory.Wanted(
        groups=frozenset(named[SsoSourceKind.GROUP]),
        realm_roles=frozenset(named[SsoSourceKind.REALM_ROLE]),
        client_roles=frozenset(named[SsoSourceKind.CLIENT_ROLE]),
    )


def at_stake(issuer: str) -> dict[str, set[str]]:
    """The people active here (service accounts aside), each with the group paths whose rules give something
    they hold from single sign-on: whom a listing that skipped them would deactivate or take it from, so whom
    the read confirms on their own first. One query per group rule."""
    people = ExternalIdentity.objects.filter(issuer=issuer, user__is_active=True).exclude(
        user__username__startswith=SERVICE_ACCOUNT_PREFIX
    )
    subjects = dict(people.values_list("user_id", "subject"))
    found: dict[str, set[str]] = {subject: set() for subject in subjects.values()}
    for rule in SsoMappingRule.objects.filter(kind=SsoSourceKind.GROUP):
        holders: QuerySet[Any]
        if rule.team_id is not None:
            holders = Membership.objects.filter(team_id=rule.team_id)
        elif rule.org_role:
            holders = OrgRoleGrant.objects.filter(role=rule.org_role)
        elif rule.department_id is not None:
            holders = DepartmentRole.objects.filter(
                department_id=rule.department_id, role=rule.department_role
            )
        else:
            continue
        held = holders.filter(source=GrantSource.SSO, user__in=people.values("user_id"))
        for user_id in held.values_list("user_id", flat=True):
            if user_id in subjects:
                found[subjects[user_id]].add(rule.value)
    return found


def _apply(config: OidcConfig, issuer: str, found: directory.Directory, run: DirectorySync) -> None:
    """Each person in their own transaction; ``run`` counts what was committed."""
    actor = sso_mapping.system_actor()
    failed: list[str] = []
    identities = ExternalIdentity.objects.filter(issuer=issuer).order_by("pk")
    for pk, username in list(identities.values_list("pk", "user__username")):
        counted = run.deactivated, run.memberships_changed, run.error
        try:
            with transaction.atomic():
                _apply_person(config, pk, found, run, actor)
        except Exception:
            run.deactivated, run.memberships_changed, run.error = counted  # rolled back: not done
            logger.exception("directory sync left %s as they were", username)
            failed.append(username)
    if failed:
        left = f"Not applied (an error, logged), so left as they were: {', '.join(failed)}."
        run.error = f"{left} {run.error}".strip()[:300]


def _apply_person(
    config: OidcConfig, pk: int, found: directory.Directory, run: DirectorySync, actor: Actor
) -> None:
    # The identity and user under the locks a sign-in takes first (``sso.services._identity``), so the two
    # take the same rows in the same order; is_active is read under the lock deactivate_user takes.
    identity = (
        ExternalIdentity.objects.select_for_update(of=("self", "user"))
        .select_related("user")
        .filter(pk=pk)
        .first()
    )
    if identity is None:
        return  # the user was deleted meanwhile
    if identity.created_at > found.started_at:
        return  # first signed in here since the directory was read: not in the read, whatever it says
    user = identity.user
    if identity.subject not in found.enabled and identity.subject not in found.gone:
        return  # skipped by a shifted page, or a service account: not known to be gone
    if not found.enabled.get(identity.subject, False):
        if user.is_active:
            # The last platform admin too: kept, their tokens and sessions would outlive their leaving.
            services.deactivate_user(actor=actor, user=user, directory=True)
            run.deactivated += 1
            if not services.active_admins_exist():
                run.error = (
                    f"{user.username}, disabled in the directory, was the last active platform admin: "
                    "there is none until the directory names one (an admin group or role rule)."
                )[:300]
        return
    if user.is_active:
        if identity.claims_issued_at is not None and identity.claims_issued_at > found.read_at:
            return  # a sign-in since the read applied newer claims (read under the lock it takes)
        claims: dict[str, Any] = found.claims_of(identity.subject, config.client_id)
        summary = sso_mapping.apply(user, claims, actor=actor, client_id=config.client_id)
        # The directory as it was read: a token issued before the read may not grant back what it took, one
        # issued since may.
        ExternalIdentity.objects.filter(pk=identity.pk).update(claims_issued_at=found.read_at)
        run.memberships_changed += len(summary.created) + len(summary.updated) + len(summary.removed)


def run_once(config: OidcConfig, sync: dict[str, Any]) -> DirectorySync:
    """One sync; its row says what changed or why nothing did (an unsaved row: another sync was running)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
        if not cursor.fetchone()[0]:
            logger.info("directory sync skipped: another is running")
            return DirectorySync(finished_at=timezone.now(), error=BUSY)
    try:
        # Held here, so no other sync is alive: a row still unfinished is a dead worker's.
        DirectorySync.objects.filter(finished_at__isnull=True).update(
            finished_at=timezone.now(), ok=False, error=INTERRUPTED
        )
        return _run(config, sync)
    finally:
        with contextlib.suppress(DatabaseError), connection.cursor() as cursor:  # a lost session let go of it
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])


def _run(config: OidcConfig, sync: dict[str, Any]) -> DirectorySync:
    run = DirectorySync.objects.create()
    try:
        issuer = client.discovery(config)["issuer"]
        found = directory.read(
            config,
            client_id=sync["client_id"],
            client_secret=sync["client_secret"],
            wanted=wanted(),
            subjects=ExternalIdentity.objects.filter(issuer=issuer).values_list("subject", flat=True),
            at_stake=at_stake(issuer),
        )
        run.users_read = len(found.enabled)
        _apply(config, issuer, found, run)
        run.ok = True
    except (directory.Unavailable, client.Refused) as exc:
        run.error = str(exc if isinstance(exc, directory.Unavailable) else exc.message)[:300]
        run.deactivated = run.memberships_changed = 0
        logger.warning("directory sync changed nothing: %s", run.error)
    except Exception:
        run.error, run.deactivated, run.memberships_changed = "The sync failed; nothing was changed.", 0, 0
        logger.exception("directory sync failed")
    run.finished_at = timezone.now()
    run.save()
    stale = DirectorySync.objects.values_list("pk", flat=True)[KEEP_RUNS:]
    DirectorySync.objects.filter(pk__in=list(stale)).delete()
    return run


def last_runs(limit: int = 10) -> tuple[DirectorySync | None, list[DirectorySync]]:
    """The last successful run, and the latest runs (newest first), for the admin page."""
    ok = DirectorySync.objects.filter(ok=True).first()
    return ok, list(DirectorySync.objects.all()[:limit])

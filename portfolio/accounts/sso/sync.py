"""The directory sync: Keycloak's users and group memberships applied here, every ``OIDC_SYNC['interval']``.

For every person who has signed in from the realm (an ``ExternalIdentity``):
- disabled or deleted in Keycloak: deactivated here (``accounts.services.deactivate_user``: sessions ended,
  personal tokens revoked), within one interval of the change;
- otherwise: their memberships and roles made what the mapping rules give for their groups and roles, as at
  sign-in (``accounts.sso.mapping.apply``).
Every change is an audit row by ``system:keycloak``. The directory is read in full before anything changes,
and the changes are one transaction: a sync that cannot read Keycloak, or fails half way, changes nothing and
says so in its ``DirectorySync`` row, which the single sign-on page shows. A user deactivated here by an admin
is left alone, and one whom Keycloak enables again is not reactivated by the sync: an admin decides.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from portfolio.accounts import services
from portfolio.accounts.choices import SsoSourceKind
from portfolio.accounts.models import DirectorySync, ExternalIdentity, SsoMappingRule
from portfolio.accounts.sso import client, directory
from portfolio.accounts.sso import mapping as sso_mapping
from portfolio.accounts.sso.config import OidcConfig

logger = logging.getLogger("portfolio.accounts.sso.sync")
KEEP_RUNS = 100
# Keycloak's user of a client's service account. Its admin API lists users without them (GET /users, and
# since 26.7 GET /users/{id}): absent from the listing is then no sign of being deleted or disabled.
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


def _apply(config: OidcConfig, issuer: str, found: directory.Directory, run: DirectorySync) -> None:
    actor = sso_mapping.system_actor()
    identities = ExternalIdentity.objects.filter(issuer=issuer).select_related("user").order_by("pk")
    for identity in identities:
        user = identity.user
        if identity.subject not in found.enabled and user.username.startswith(SERVICE_ACCOUNT_PREFIX):
            continue  # not listed, so not known to be gone: its client's tokens end with the client
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
            continue
        if user.is_active:
            claims: dict[str, Any] = found.claims_of(identity.subject, config.client_id)
            summary = sso_mapping.apply(user, claims, actor=actor, client_id=config.client_id)
            # The directory as it is now: a token issued before this run may not grant back what it took.
            ExternalIdentity.objects.filter(pk=identity.pk).update(claims_issued_at=timezone.now())
            run.memberships_changed += len(summary.created) + len(summary.updated) + len(summary.removed)


def run_once(config: OidcConfig, sync: dict[str, Any]) -> DirectorySync:
    """One sync; its row says what changed or why nothing did."""
    run = DirectorySync.objects.create()
    try:
        issuer = client.discovery(config)["issuer"]
        found = directory.read(
            config,
            client_id=sync["client_id"],
            client_secret=sync["client_secret"],
            wanted=wanted(),
            subjects=ExternalIdentity.objects.filter(issuer=issuer).values_list("subject", flat=True),
        )
        run.users_read = len(found.enabled)
        with transaction.atomic():
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

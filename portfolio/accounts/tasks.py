"""Accounts' periodic work, on the control queue: the directory sync with Keycloak."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings


@shared_task(name="accounts.sync_directory")
def sync_directory() -> dict | None:
    """Apply Keycloak's users and memberships (``accounts.sso.sync``); None when no sync is configured."""
    from portfolio.accounts.sso import config, sync

    oidc = config.current()
    if oidc is None or not settings.OIDC_SYNC:
        return None
    run = sync.run_once(oidc, settings.OIDC_SYNC)
    return {
        "ok": run.ok,
        "error": run.error,
        "deactivated": run.deactivated,
        "changed": run.memberships_changed,
    }

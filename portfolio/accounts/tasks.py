"""Accounts' periodic work, on the control queue: the directory sync with Keycloak; expired sessions deleted."""

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


@shared_task(name="accounts.clear_sessions")
def clear_sessions() -> None:
    """Delete expired sessions (Django's ``clearsessions``): nothing else does, and every deactivation and single
    sign-on sign-in reads the whole table (``services._end_sessions``, ``sso.logout``)."""
    from importlib import import_module

    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()

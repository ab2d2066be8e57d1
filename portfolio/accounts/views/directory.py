"""The directory sync on the single sign-on page: its last runs (``context``) and "Sync now"."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.accounts.sso import sync


def context(actor) -> dict:
    """What the page's directory sync section shows."""
    last_ok, runs = sync.last_runs()
    return {
        "sync_on": bool(settings.OIDC_SYNC),
        "sync_interval": (settings.OIDC_SYNC or {}).get("interval"),
        "last_ok": last_ok,
        "runs": runs,
        "can_sync": gate.can(actor, "user.manage"),
    }


@require_POST
def sso_sync(request):
    """Permission: ``user.manage`` (platform admin). Queues one sync on the control queue."""
    gate.require(actor_of(request), "user.manage")
    if not settings.OIDC_SYNC:
        messages.error(request, "The directory sync is not set up on this platform.")
    else:
        from portfolio.accounts.tasks import sync_directory

        sync_directory.delay()
        messages.success(request, "A directory sync was queued; its result appears below within a minute.")
    return redirect("sso-mapping-list")

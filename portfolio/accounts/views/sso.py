"""Signing in with the organisation's identity provider (OpenID Connect, Keycloak).

``sso_login`` sends the browser to the realm with a fresh state, nonce and PKCE challenge, kept in this
browser's session; ``sso_callback`` accepts only the state it sent, exchanges the code, verifies the ID token
(``accounts.sso.client``) and signs the person in (``accounts.sso.services``). A refusal creates no session,
says why on the sign-in page and is audited as ``user.login_failed`` (within the sign-in audit budget).
"""

from __future__ import annotations

import re

from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_not_required
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portfolio.accounts.context import actor_of
from portfolio.accounts.sso import client
from portfolio.accounts.sso import config as sso_config
from portfolio.accounts.sso import services as sso_services
from portfolio.accounts.views.auth import audit_attempt, safe_next

PENDING = "sso.pending"
# Sign-ins started in other tabs of the same browser that may still come back.
MAX_PENDING = 5
BACKEND = "django.contrib.auth.backends.ModelBackend"


def _not_set_up(request):
    messages.error(request, "Single sign-on is not set up on this platform.")
    return redirect("login")


def _redirect_uri(request) -> str:
    return request.build_absolute_uri(reverse("sso-callback"))


@login_not_required
@never_cache
@require_GET
def sso_login(request):
    """Permission: none, this starts a sign-in."""
    config = sso_config.current()
    if config is None:
        return _not_set_up(request)
    next_url = safe_next(request)
    if request.user.is_authenticated:
        return redirect(next_url)
    redirect_uri = _redirect_uri(request)
    try:
        url, pending = client.start(config, redirect_uri)
    except client.Refused as refusal:
        messages.error(request, refusal.message)
        return redirect("login")
    waiting = dict(list(request.session.get(PENDING, {}).items())[-(MAX_PENDING - 1) :])
    waiting[pending.state] = {
        "nonce": pending.nonce,
        "code_verifier": pending.code_verifier,
        "redirect_uri": redirect_uri,
        "next": next_url,
    }
    request.session[PENDING] = waiting
    return redirect(url)


def _sign_in(request, config, pending: dict | None):
    if pending is None:
        raise client.Refused(
            "state_mismatch",
            "This sign-in was not started here or has already been used. Please sign in again.",
        )
    if request.GET.get("error"):
        raise client.Refused(
            # The realm's error code (access_denied...), kept to its alphabet: the query string is anyone's.
            "provider_error: " + re.sub(r"[^a-z_]", "", request.GET["error"])[:40],
            f"{config.organisation} did not sign you in. Please try again.",
        )
    issuer = client.discovery(config)["issuer"]
    # The authorization response names its issuer (RFC 9207): an answer from another provider is refused.
    if request.GET.get("iss") not in (None, issuer):
        raise client.Refused("issuer_mismatch", f"This answer did not come from {config.organisation}.")
    code = request.GET.get("code", "")
    if not code:
        raise client.Refused("code_missing", f"{config.organisation} sent no sign-in code. Please try again.")
    tokens = client.exchange(
        config, code=code, redirect_uri=pending["redirect_uri"], code_verifier=pending["code_verifier"]
    )
    claims = client.verify_id_token(config, str(tokens.get("id_token", "")), nonce=pending["nonce"])
    return sso_services.sign_in(
        actor=actor_of(request), issuer=issuer, claims=claims, organisation=config.organisation
    )


@login_not_required
@never_cache
@require_GET
def sso_callback(request):
    """Permission: none; only the state this browser's session sent is accepted."""
    config = sso_config.current()
    if config is None:
        return _not_set_up(request)
    waiting = request.session.get(PENDING, {})
    # Taken out whatever follows: a state is good for one answer.
    pending = waiting.pop(request.GET.get("state", ""), None)
    request.session[PENDING] = waiting
    try:
        user = _sign_in(request, config, pending)
    except client.Refused as refusal:
        audit_attempt(
            request,
            "user.login_failed",
            object_type="auth.user" if refusal.username else "auth.sso",
            object_id=refusal.username,
            object_repr=refusal.username or f"single sign-on with {config.organisation}",
            after={"method": sso_services.METHOD, "reason": refusal.reason},
        )
        messages.error(request, refusal.message)
        return redirect("login")
    auth_login(request, user, backend=BACKEND)
    return redirect(pending["next"] if pending else "dashboard")

"""Signing in with the organisation's identity provider (OpenID Connect, Keycloak), and its logouts.

``sso_login`` sends the browser to the realm with a fresh state, nonce and PKCE challenge, kept in this
browser's session; ``sso_callback`` accepts only the state it sent, exchanges the code, verifies the ID token
(``accounts.sso.client``) and signs the person in (``accounts.sso.services``), keeping what signing out needs
(``accounts.sso.logout``). A refusal creates no session, says why on the sign-in page, counts as a failed
sign-in of the client's address (and of the user name, when one is known) for ``accounts.lockout``, and is
audited as ``user.login_failed`` (within the sign-in audit budget); a locked address is refused at once. An
answer to a browser with no sign-in under way is not counted: it can guess nothing (no state of it is
pending), and any web page can make a visitor's browser send one (an <img>, without the session cookie),
which would lock the visitor's address, and everyone behind it, out of every sign-in.

``sso_backchannel_logout`` is the realm's back-channel logout: a logout token that ends sessions here.
"""

from __future__ import annotations

import re

from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from portfolio.accounts import lockout
from portfolio.accounts.context import actor_of
from portfolio.accounts.sso import client, sign_in_claims
from portfolio.accounts.sso import config as sso_config
from portfolio.accounts.sso import logout as sso_logout
from portfolio.accounts.sso import services as sso_services
from portfolio.accounts.views.auth import (
    TOO_MANY_ATTEMPTS,
    audit_failure,
    login_page,
    refused_form,
    safe_next,
)
from portfolio.requestcontext import client_ip

PENDING = "sso.pending"
# Sign-ins started in other tabs of the same browser that may still come back.
MAX_PENDING = 5
# How long an anonymous browser's session lasts while it signs in at the realm.
PENDING_SECONDS = 1800
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
    # Anyone may start one: the session it needs lasts as long as a sign-in at the realm may take, not a day, and
    # is deleted with the expired ones (``accounts.clear_sessions``); signed in, it gets the usual age.
    request.session.set_expiry(PENDING_SECONDS)
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
    id_token = str(tokens.get("id_token", ""))
    claims = client.verify_id_token(config, id_token, nonce=pending["nonce"])
    claims = sign_in_claims.completed(config, tokens, claims, issuer)
    user = sso_services.sign_in(
        actor=actor_of(request), issuer=issuer, claims=claims, organisation=config.organisation
    )
    return user, issuer, claims, id_token


def _refused(request, config, refusal: client.Refused, *, under_way: bool):
    """The sign-in page saying why; the refusal counted for lockout (an unreachable realm is nobody's
    failure, nor an answer to a browser with no sign-in ``under_way``) and audited within the budget."""
    ip = client_ip(request)
    uncounted = refusal.reason == "provider_unavailable" or (
        refusal.reason == "state_mismatch" and not under_way
    )
    failure = lockout.NOT_COUNTED if uncounted else lockout.register_failure(refusal.username or None, ip)
    audit_failure(
        request,
        refusal.username,
        ip,
        failure,
        object_type="auth.user" if refusal.username else "auth.sso",
        object_repr=refusal.username or f"single sign-on with {config.organisation}",
        after={"method": sso_services.METHOD, "reason": refusal.reason},
    )
    messages.error(request, refusal.message)
    return redirect("login")


@login_not_required
@never_cache
@require_GET
def sso_callback(request):
    """Permission: none; only the state this browser's session sent is accepted."""
    config = sso_config.current()
    if config is None:
        return _not_set_up(request)
    waiting = request.session.get(PENDING, {})
    under_way = bool(waiting)  # before this answer's state is taken out
    # Taken out whatever follows: a state is good for one answer.
    pending = waiting.pop(request.GET.get("state", ""), None)
    if under_way:  # a request with no sign-in under way (no cookie) saves no session
        request.session[PENDING] = waiting
    if lockout.is_locked(None, client_ip(request)):
        # As the password form: refused before the answer is looked at; the lock was audited when it started.
        form = refused_form(TOO_MANY_ATTEMPTS)
        return login_page(request, form, pending["next"] if pending else safe_next(request), status=429)
    try:
        user, issuer, claims, id_token = _sign_in(request, config, pending)
    except client.Refused as refusal:
        return _refused(request, config, refusal, under_way=under_way)
    auth_login(request, user, backend=BACKEND)
    request.session.set_expiry(None)
    sso_logout.remember(request.session, user=user, issuer=issuer, claims=claims, id_token=id_token)
    return redirect(pending["next"] if pending else "dashboard")


@csrf_exempt
@login_not_required
@never_cache
@require_POST
def sso_backchannel_logout(request):
    """Permission: none; only a logout token signed by the realm for this client is acted on."""
    config = sso_config.current()
    if config is None:
        return _logout_refused(request, "Single sign-on is not set up on this platform.")
    try:
        claims = sso_logout.verify_logout_token(config, request.POST.get("logout_token", ""))
    except client.Refused as refusal:
        return _logout_refused(request, refusal.reason)
    sso_logout.end_sessions(actor=actor_of(request), issuer=claims["iss"], claims=claims)
    return JsonResponse({})


def _logout_refused(request, message: str) -> JsonResponse:
    """400 in the API's error shape (the realm only reads the status)."""
    error = {
        "code": "invalid_request",
        "message": message,
        "request_id": getattr(request, "request_id", None),
    }
    return JsonResponse({"error": error}, status=400)

"""Signing in and out (throttled; failures and locks audited within a budget) and changing one's own password."""

from __future__ import annotations

import hashlib
import hmac
import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, get_user_model, update_session_auth_hash
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.decorators import login_not_required
from django.db import transaction
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from portfolio.accounts import lockout, services
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from portfolio.accounts.forms import LoginForm, PasswordChangeForm
from portfolio.accounts.secrets_hashing import keyed_hash
from portfolio.accounts.sso import config as sso_config
from portfolio.accounts.sso import logout as sso_logout
from portfolio.audit import services as audit
from portfolio.formviews import submit
from portfolio.requestcontext import client_ip

logger = logging.getLogger(__name__)


def safe_next(request) -> str:
    """Where to go after signing in: a path of this site. Not a bare word ("reports"): ``redirect`` takes one
    for a view's name, and raised (a 500 after a correct password, its sign-in audited but no session saved;
    found by review)."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate.startswith("/") and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(settings.LOGIN_REDIRECT_URL)


def audit_attempt(
    request, action: str, *, object_type: str, object_id: str, object_repr: str, after: dict | None = None
) -> None:
    """A failed sign-in or a lock, audited under an account's name or a fingerprint (``audited_name``, never
    the password), within the budget ``lockout`` keeps so an anonymous loop cannot flood the trail."""
    slot = lockout.audit_slot()
    if slot == lockout.SKIP:
        return
    if slot == lockout.BUDGET_SPENT:
        window = settings.LOGIN_LOCKOUT_SECONDS
        logger.warning(
            "Sign-in audit budget spent (%d rows in %d s): further failed sign-ins in this window are "
            "counted for lockout but not audited.",
            lockout.AUDIT_BUDGET,
            window,
        )
        action, object_type, object_id, object_repr = (
            "user.login_audit_paused",
            "auth.login",
            "",
            "sign-in audit",
        )
        after = {"audited_rows": lockout.AUDIT_BUDGET, "window_seconds": window}
    anonymous = Actor(
        ip=client_ip(request),
        user_agent=request.headers.get("User-Agent", "")[:300],
        request_id=getattr(request, "request_id", None),
    )
    audit.record_standalone(
        anonymous,
        action,
        object_type=object_type,
        object_id=object_id[:64],
        object_repr=object_repr[:200],
        after=after,
    )


def audited_name(typed: str) -> str:
    """What a failed sign-in's audit rows name: the user name typed when it is an account's (up to case),
    else a keyed fingerprint of it. Whatever was typed there (a password, often) reaches every auditor and
    export otherwise; the fingerprint still shows the same unknown name tried again."""
    users = get_user_model()._default_manager
    if users.filter(**{f"{get_user_model().USERNAME_FIELD}__iexact": typed}).exists():
        return typed
    # Its own key, derived from the token hash key, so these fingerprints match no token's hash.
    key = hmac.new(settings.TOKEN_HASH_KEY, b"audit-unknown-user-name", hashlib.sha256).digest()
    return "unknown-name:" + keyed_hash(typed, key)[:16]


def audit_failure(
    request,
    username: str,
    ip: str | None,
    failure: lockout.Failure,
    *,
    object_type: str = "auth.user",
    object_repr: str = "",
    after: dict | None = None,
) -> None:
    """A counted failure (``lockout.register_failure``): its ``user.login_failed`` row while it is among the
    first of its name and address, and a ``user.login_locked`` row for each lock it starts. ``username`` is
    empty for a single sign-on answer that named nobody (``object_type`` and ``object_repr`` say what)."""
    if failure.audit_failure:
        audit_attempt(
            request,
            "user.login_failed",
            object_type=object_type,
            object_id=username,
            object_repr=object_repr or username,
            after=after,
        )
    # A lock starts on the failure that reaches its limit, so that many failures led to it.
    limits = lockout.limits()
    window = settings.LOGIN_LOCKOUT_SECONDS
    if "user" in failure.locks and username:
        audit_attempt(
            request,
            "user.login_locked",
            object_type="auth.user",
            object_id=username,
            object_repr=username,
            after={"lock": "account", "failures": limits["user"], "lockout_seconds": window},
        )
    if "ip" in failure.locks and ip:
        audit_attempt(
            request,
            "user.login_locked",
            object_type="auth.client_address",
            object_id=ip,
            object_repr=f"address {ip}",
            after={"lock": "address", "failures": limits["ip"], "lockout_seconds": window},
        )


TOO_MANY_ATTEMPTS = "Too many failed attempts, try again later."


def _use_sso(config) -> str:
    organisation = config.organisation if config else "your organisation"
    return f"Use \u201cSign in with {organisation}\u201d."


def refused_form(message: str) -> LoginForm:
    """An empty sign-in form that says why the last attempt was refused before it was looked at."""
    form = LoginForm(None)
    form.cleaned_data = {}  # an unbound form has none; add_error reads it
    form.add_error(None, message)
    return form


def _password_allowed(user) -> bool:
    """Whether ``settings.LOCAL_SIGN_IN`` lets this user in with a password (``admins``: org admins only)."""
    if settings.LOCAL_SIGN_IN == "admins":
        return Actor(user=user).is_admin
    return settings.LOCAL_SIGN_IN == "everyone"


@login_not_required
@sensitive_post_parameters("password")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request):
    """Permission: none, this is the sign-in page. Throttled by ``accounts.lockout``; a password is accepted
    as ``settings.LOCAL_SIGN_IN`` says (everyone, only platform admins, or nobody)."""
    next_url = safe_next(request)
    if request.user.is_authenticated:
        return redirect(next_url)
    config = sso_config.current()
    policy = settings.LOCAL_SIGN_IN
    form = LoginForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST" and policy == "off":
        # The form is not offered; a POST made anyway is refused before anything is looked at.
        form = refused_form(f"Signing in with a password is turned off on this platform. {_use_sso(config)}")
        status = 403
    elif form.is_valid():
        username, password = form.cleaned_data["username"], form.cleaned_data["password"]
        ip = client_ip(request)
        if lockout.is_locked(username, ip) or not lockout.reserve(username, ip):
            # Refused before the password is looked at, so a locked account cannot be probed; so is one more
            # attempt than the limit leaves while others are under way. Not audited: the lock was, once,
            # when it started.
            form.add_error(None, TOO_MANY_ATTEMPTS)
            status = 429
        else:
            try:
                user = authenticate(request, username=username, password=password)
                failure = lockout.register_failure(username, ip) if user is None else None
            finally:
                lockout.release(username, ip)
            if user is None:
                assert failure is not None
                # Counted (above) under the name typed; audited under one that cannot leak a password.
                audit_failure(request, audited_name(username), ip, failure)
                form.add_error(None, "Wrong user name or password.")
            elif not _password_allowed(user):
                # The password was right: not a failure to count, but not a way in for this account either.
                audit_attempt(
                    request,
                    "user.login_failed",
                    object_type="auth.user",
                    object_id=username,
                    object_repr=username,
                    after={"method": "password", "reason": "password_sign_in_admins_only"},
                )
                form.add_error(
                    None,
                    "Signing in with a password is kept for platform admins on this platform. "
                    + _use_sso(config),
                )
                status = 403
            else:
                lockout.clear(username)
                with transaction.atomic():  # the sign-in (its last_login) and its audit row, or neither
                    auth_login(request, user)
                    # The usual age, not that of a single sign-on begun in this browser (``sso.PENDING_SECONDS``).
                    request.session.set_expiry(None)
                    audit.record(
                        actor_of(request),
                        "user.login",
                        user,
                        after={"method": "password"},
                        object_repr=user.get_username(),
                    )
                return redirect(next_url)
    return login_page(request, form, next_url, status=status)


def login_page(request, form, next_url: str, *, status: int = 200):
    """The sign-in page: the password form as ``settings.LOCAL_SIGN_IN`` allows, and the organisation's."""
    context = {
        "form": form,
        "next": next_url,
        "sso": sso_config.current(),
        "password_sign_in": settings.LOCAL_SIGN_IN != "off",
        "admins_only": settings.LOCAL_SIGN_IN == "admins",
    }
    return render(request, "registration/login.html", context, status=status)


@require_POST
def logout_view(request):
    """Permission: any signed-in user, for their own session. A session made by single sign-on is ended at
    the realm too: the browser goes there (with the ID token as the hint) and comes back to sign-in. Either
    way the browser is told to drop its cache (``Clear-Site-Data``), the back/forward cache with it: the next
    person at it must not get the pages just signed out of by pressing Back."""
    actor = actor_of(request)
    session_key = request.session.session_key
    id_token = request.session.get(sso_logout.ID_TOKEN)
    after = {"method": "sso"} if id_token is not None else None
    audit.record_standalone(
        actor, "user.logout", request.user, after=after, object_repr=request.user.get_username()
    )
    auth_logout(request)
    sso_logout.forget(session_key)
    messages.info(request, "You are signed out.")
    response = redirect(settings.LOGOUT_REDIRECT_URL)
    config = sso_config.current()
    if id_token is not None and config is not None:
        back = request.build_absolute_uri(reverse(settings.LOGOUT_REDIRECT_URL))
        url = sso_logout.end_session_url(config, id_token=id_token, post_logout_redirect_uri=back)
        if url:
            response = redirect(url)
    response["Clear-Site-Data"] = '"cache"'
    return response


@sensitive_post_parameters()
@never_cache
@require_http_methods(["GET", "POST"])
def password_change(request):
    """Permission: any signed-in user, for their own account. The current password it asks for is
    throttled, counted and audited as a sign-in's (``accounts.lockout``): a session left open, or stolen,
    must not be a way to guess it at full speed."""
    actor = actor_of(request)
    form = PasswordChangeForm(request.user, request.POST if request.method == "POST" else None)
    if request.method == "POST":
        username, ip = request.user.get_username(), client_ip(request)
        if lockout.is_locked(username, ip) or not lockout.reserve(username, ip):
            form = PasswordChangeForm(request.user)
            form.cleaned_data = {}  # an unbound form has none; add_error reads it
            form.add_error(None, TOO_MANY_ATTEMPTS)
            return render(request, "registration/password_change.html", {"form": form}, status=429)
        try:
            form.is_valid()  # checks the current password: the slow hash, while the place is held
            failure = lockout.register_failure(username, ip) if "old_password" in form.errors else None
        finally:
            lockout.release(username, ip)
        if failure is not None:
            audit_failure(request, username, ip, failure, after={"method": "password_change"})

    def changed(_):
        update_session_auth_hash(request, request.user)
        messages.success(request, "Your password was changed.")
        return redirect("dashboard")

    done = submit(
        request,
        form,
        lambda: services.change_password(
            actor=actor, user=request.user, new_password=form.cleaned_data["new_password1"]
        ),
        then=changed,
        fields={"new_password": "new_password1"},
    )
    if done is not None:
        return done
    return render(request, "registration/password_change.html", {"form": form})

"""Accounts from single sign-on: a verified identity finds its user, or creates one just in time.

A person is known by the ID token's issuer and subject (``ExternalIdentity``), never by a user name alone: a
realm user whose name matches a local account that was not made by sign-on is refused rather than let into
it (a break-glass admin's account must not be claimed from the realm).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import ExternalIdentity
from portfolio.accounts.sso.client import Refused
from portfolio.audit import services as audit

User = get_user_model()
METHOD = "sso"


def _username(claims: dict[str, Any]) -> str:
    username = str(claims.get("preferred_username") or "").strip()
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        username = ""
    if not username or len(username) > 150:
        raise Refused(
            "username_invalid",
            "Your single sign-on account has no user name this platform can use. Ask a platform admin.",
        )
    return username


@transaction.atomic
def account_for(*, actor: Actor, issuer: str, claims: dict[str, Any], organisation: str):
    """The active user for verified claims of the realm (an ID token's or an access token's), created just
    in time the first time (audited as ``user.create``). Refused for a deactivated user or a user name a
    local account holds."""
    username = _username(claims)
    subject = str(claims["sub"])
    identity = (
        ExternalIdentity.objects.select_for_update()
        .select_related("user")
        .filter(issuer=issuer, subject=subject)
        .first()
    )
    now = timezone.now()
    if identity is None:
        if User.objects.filter(username__iexact=username).exists():
            raise Refused(
                "username_taken",
                f"An account named {username!r} already exists here and is not linked to {organisation}. "
                "Ask a platform admin.",
                username=username,
            )
        user = User(username=username, email=str(claims.get("email") or "")[:254])
        user.set_unusable_password()  # signs in through the realm only
        user.save(force_insert=True)
        identity = ExternalIdentity.objects.create(
            user=user, issuer=issuer, subject=subject, username=username, last_login_at=now
        )
        after = {"username": user.username, "email": user.email, "source": METHOD, "issuer": issuer}
        # Made by the person's own first sign-in: they are the actor of their account's creation.
        audit.record(
            dataclasses.replace(actor, user=user), "user.create", user, after=after, object_repr=username
        )
    else:
        user = identity.user
        if not user.is_active:
            raise Refused(
                "user_inactive",
                "Your account here is deactivated. Ask a platform admin.",
                username=user.username,
            )
        identity.username, identity.last_login_at = username, now
        identity.save(update_fields=["username", "last_login_at"])
    return user


@transaction.atomic
def sign_in(*, actor: Actor, issuer: str, claims: dict[str, Any], organisation: str):
    """The user for verified ID token claims (``account_for``), audited as ``user.login``, in one
    transaction."""
    user = account_for(actor=actor, issuer=issuer, claims=claims, organisation=organisation)
    audit.record(
        dataclasses.replace(actor, user=user),
        "user.login",
        user,
        after={"method": METHOD},
        object_repr=user.get_username(),
    )
    return user

"""Accounts from single sign-on: a verified identity finds its user, or creates one just in time.

A person is known by the ID token's issuer and subject (``ExternalIdentity``), never by a user name alone: a
realm user whose name matches a local account that was not made by sign-on is refused rather than let into
it (a break-glass admin's account must not be claimed from the realm).

Every sign-in also brings the person's email, name, groups and roles: the first two are copied, the others
decide their teams and roles through the single sign-on mapping rules (``accounts.sso.mapping``).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import ExternalIdentity
from portfolio.accounts.sso import config as sso_config
from portfolio.accounts.sso import mapping
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


def _identity(issuer: str, subject: str) -> ExternalIdentity | None:
    return (
        # The user's row too, on purpose: its is_active is read under the lock deactivate_user takes.
        ExternalIdentity.objects.select_for_update(of=("self", "user"))
        .select_related("user")
        .filter(issuer=issuer, subject=subject)
        .first()
    )


def _taken(username: str, organisation: str) -> Refused:
    return Refused(
        "username_taken",
        f"An account named {username!r} already exists here and is not linked to {organisation}. "
        "Ask a platform admin (who can relink it: manage.py sso_relink).",
        username=username,
    )


def _profile(claims: dict[str, Any]) -> dict[str, str]:
    """The user's email and name as the realm sends them (``given_name``/``family_name``, else ``name``);
    what the claims leave out (a realm that sends no email) is not in the result, so it is left as it is."""
    profile = {}
    if "email" in claims:
        profile["email"] = str(claims.get("email") or "").strip()[:254]
    given, family = str(claims.get("given_name") or ""), str(claims.get("family_name") or "")
    if given or family or "name" in claims:
        profile["first_name"] = (given or ("" if family else str(claims.get("name") or ""))).strip()[:150]
        profile["last_name"] = family.strip()[:150]
    return profile


def _create(*, actor: Actor, issuer: str, subject: str, username: str, claims: dict, organisation: str):
    """A new user and its identity, or None when a sign-in of the same person made them meanwhile."""
    if User.objects.filter(username__iexact=username).exists():
        raise _taken(username, organisation)
    user = User(username=username, **_profile(claims))
    user.set_unusable_password()  # signs in through the realm only
    try:
        # A savepoint: two first sign-ins of one person race to here, and the second's insert waits for
        # the first's commit and fails on the unique user name or identity; it then finds what was made.
        with transaction.atomic():
            user.save(force_insert=True)
            ExternalIdentity.objects.create(
                user=user, issuer=issuer, subject=subject, username=username, last_login_at=timezone.now()
            )
    except IntegrityError:
        return None
    after = {"username": user.username, "email": user.email, "source": METHOD, "issuer": issuer}
    # Made by the person's own first sign-in: they are the actor of their account's creation.
    audit.record(
        dataclasses.replace(actor, user=user), "user.create", user, after=after, object_repr=username
    )
    return user


def _update_profile(user, claims: dict[str, Any], actor: Actor) -> None:
    """Copy a changed email or name from the realm, audited as ``user.update`` by ``system:keycloak``."""
    profile = _profile(claims)
    before = {field: getattr(user, field) for field in profile}
    if not profile or before == profile:
        return
    for field, value in profile.items():
        setattr(user, field, value)
    user.save(update_fields=list(profile))
    audit.record(
        mapping.system_actor(actor),
        "user.update",
        user,
        before=before,
        after={**profile, "source": METHOD},
        object_repr=user.username,
    )


@transaction.atomic
def account_for(*, actor: Actor, issuer: str, claims: dict[str, Any], organisation: str):
    """The active user for verified claims of the realm (an ID token's or an access token's), created just
    in time the first time (audited as ``user.create``). Refused for a deactivated user or a user name a
    local account holds. At every call the realm's email and name are copied to the user and the single
    sign-on mapping rules are applied to the claims' groups and roles (``mapping.apply``)."""
    username = _username(claims)
    subject = str(claims["sub"])
    identity = _identity(issuer, subject)
    user = None
    if identity is None:
        user = _create(
            actor=actor,
            issuer=issuer,
            subject=subject,
            username=username,
            claims=claims,
            organisation=organisation,
        )
        if user is None:
            identity = _identity(issuer, subject)  # made by a racing sign-in, committed since
            if identity is None:  # the name was taken by another account meanwhile
                raise _taken(username, organisation)
        else:
            ExternalIdentity.objects.filter(issuer=issuer, subject=subject).update(
                claims_issued_at=_issued(claims)
            )
    if user is None:
        assert identity is not None
        user = identity.user
        if not user.is_active:
            raise Refused(
                "user_inactive",
                "Your account here is deactivated. Ask a platform admin.",
                username=user.username,
            )
        identity.username, identity.last_login_at = username, timezone.now()
        identity.save(update_fields=["username", "last_login_at"])
        _update_profile(user, claims, actor)
        if not _newer_claims(identity, claims):
            # An older token first used late: its groups and roles may be ones taken away since.
            return user
    config = sso_config.current()
    mapping.apply(
        user, claims, actor=mapping.system_actor(actor), client_id=config.client_id if config else ""
    )
    return user


def _newer_claims(identity: ExternalIdentity, claims: dict[str, Any]) -> bool:
    """Whether ``claims`` were issued no earlier than the newest applied to the account; if so they become
    the newest (a claim set without ``iat`` counts as issued now)."""
    issued = _issued(claims)
    updated = ExternalIdentity.objects.filter(pk=identity.pk).filter(
        Q(claims_issued_at__isnull=True) | Q(claims_issued_at__lte=issued)
    )
    return updated.update(claims_issued_at=issued) == 1


def _issued(claims: dict[str, Any]) -> datetime:
    try:
        return datetime.fromtimestamp(int(claims["iat"]), UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return timezone.now()


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

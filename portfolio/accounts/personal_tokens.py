"""Personal access tokens: a signed-in user's own credentials for scripts and the REST API, shown once,
stored as a hash, bounded in lifetime, revoked at once (and with the account's deactivation)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate, secrets_hashing
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import PersonalToken
from portfolio.audit import services as audit
from portfolio.errors import Invalid

TOKEN_PREFIX = "pat"
User = get_user_model()


@transaction.atomic
def create_personal_token(
    *, actor: Actor, name: str, expires_in_days: int | None = 90
) -> tuple[PersonalToken, str]:
    """Return the token row and its plaintext, which is never stored and never shown again."""
    if actor.user is None or actor.token_id is not None or actor.access_token:
        # A token cannot mint more tokens: a leaked one (a personal token, or the realm's access token of a
        # few minutes) must not be able to outlive its revocation, its expiry or the account's deactivation.
        raise Invalid("Personal tokens are created by a signed-in user, not with another token.")
    name = name.strip()
    if not name or len(name) > 100:
        raise Invalid("name: Give the token a name of 1-100 characters.", fields={"name": ["Required."]})
    limit = settings.PERSONAL_TOKEN_MAX_DAYS
    if expires_in_days is None or not 1 <= expires_in_days <= limit:
        raise Invalid(
            f"expires_in_days: Choose between 1 and {limit} days.",
            fields={"expires_in_days": ["Out of range."]},
        )
    # Locked as deactivate_user locks it: a token made while the account is deactivated would be missed by
    # the revocation and come back alive with a reactivation.
    if not list(User.objects.select_for_update().filter(pk=actor.user.pk, is_active=True).values_list("pk")):
        raise Invalid("This account is deactivated.")
    issued = secrets_hashing.issue(TOKEN_PREFIX)
    token = PersonalToken.objects.create(
        user=actor.user,
        name=name,
        key_id=issued.key_id,
        secret_hash=issued.hash,
        expires_at=timezone.now() + timedelta(days=expires_in_days),
    )
    audit.record(actor, "token.create", token, after=token.snapshot())
    return token, issued.plaintext


@transaction.atomic
def revoke_personal_token(*, actor: Actor, token: PersonalToken) -> PersonalToken:
    token = gate.get_visible(actor, PersonalToken, pk=token.pk)
    updated = PersonalToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if updated:
        token.refresh_from_db(fields=["revoked_at"])
        audit.record(actor, "token.revoke", token, after=token.snapshot())
    return token


def authenticate_token(presented: str) -> PersonalToken | None:
    """The token row for a presented secret if it is valid now; None for anything else."""
    key_id = secrets_hashing.parse(TOKEN_PREFIX, presented)
    if key_id is None:
        return None
    token = PersonalToken.objects.select_related("user").filter(key_id=key_id).first()
    if token is None or not secrets_hashing.matches(presented, token.secret_hash):
        return None
    if not token.is_active or not token.user.is_active:
        return None
    upgraded = secrets_hashing.upgraded_hash(presented, token.secret_hash)
    if upgraded:
        # Verified under a previous hash key (a rotation's grace period): store the current key's hash, so
        # tokens in use stop depending on the old key (compare-and-swap: a concurrent upgrade writes the same).
        PersonalToken.objects.filter(pk=token.pk, secret_hash=token.secret_hash).update(secret_hash=upgraded)
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        # Coarse last-use tracking: one write a minute per token, not one per request.
        PersonalToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token

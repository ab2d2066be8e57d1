"""Team API keys: created by a team's owner or developer, the secret shown once, revocation immediate."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate, secrets_hashing
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Invalid
from serving.gateway import keystate
from serving.gateway.models import ApiKey
from serving.models import Endpoint

KEY_PREFIX = "slm"


def _check_ips(ranges: list[str]) -> list[str]:
    cleaned = []
    for value in ranges:
        try:
            cleaned.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise Invalid(f"allowed_ips: {value!r} is not an IP address or CIDR range.") from None
    return cleaned


def _check_scopes(team: Team, scopes: list[str]) -> list[str]:
    scopes = sorted({s.strip() for s in scopes if s.strip()})
    known = set(Endpoint.objects.filter(owner_team=team, name__in=scopes).values_list("name", flat=True))
    unknown = [s for s in scopes if s not in known]
    if unknown:
        raise Invalid(f"scopes: {team.name} has no endpoint {unknown[0]!r}.")
    return scopes


def _check_limits(rpm: int | None, tpm: int | None, tokens: int | None, money: Decimal | None) -> None:
    for name, value in (("rpm_limit", rpm), ("tpm_limit", tpm), ("monthly_token_budget", tokens),
                        ("monthly_budget", money)):
        if value is not None and value < 0:
            raise Invalid(f"{name}: must not be negative.")


@transaction.atomic
def create_key(
    *, actor: Actor, team: Team, name: str, scopes: list[str] | None = None, allowed_ips: list[str] | None = None,
    rpm_limit: int | None = None, tpm_limit: int | None = None, monthly_token_budget: int | None = None,
    monthly_budget: Decimal | None = None, expires_at: datetime | None = None, service: bool = False,
) -> tuple[ApiKey, str]:
    """Return the key and its secret, which is never stored and never shown again."""
    gate.require(actor, "apikey.manage", team)
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise Invalid("name: Give the key a name of 1-100 characters.")
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid("expires_at: must be in the future.")
    _check_limits(rpm_limit, tpm_limit, monthly_token_budget, monthly_budget)
    issued = secrets_hashing.issue(KEY_PREFIX)
    key = ApiKey.objects.create(
        team=team, name=name, key_id=issued.key_id, secret_hash=issued.hash,
        scopes=_check_scopes(team, scopes or []), allowed_ips=_check_ips(allowed_ips or []),
        rpm_limit=rpm_limit, tpm_limit=tpm_limit, monthly_token_budget=monthly_token_budget,
        monthly_budget=monthly_budget, expires_at=expires_at, service=service, created_by=actor.user,
    )
    audit.record(actor, "apikey.create", key, after=key.snapshot())
    return key, issued.plaintext


@transaction.atomic
def update_key(
    *, actor: Actor, key: ApiKey, scopes: list[str], allowed_ips: list[str], rpm_limit: int | None,
    tpm_limit: int | None, monthly_token_budget: int | None, monthly_budget: Decimal | None,
) -> ApiKey:
    gate.require(actor, "apikey.manage", key)
    key = ApiKey.objects.select_for_update().select_related("team").get(pk=key.pk)
    _check_limits(rpm_limit, tpm_limit, monthly_token_budget, monthly_budget)
    before = key.snapshot()
    key.scopes, key.allowed_ips = _check_scopes(key.team, scopes), _check_ips(allowed_ips)
    key.rpm_limit, key.tpm_limit = rpm_limit, tpm_limit
    key.monthly_token_budget, key.monthly_budget = monthly_token_budget, monthly_budget
    key.save(update_fields=["scopes", "allowed_ips", "rpm_limit", "tpm_limit", "monthly_token_budget",
                            "monthly_budget"])
    audit.record(actor, "apikey.update", key, before=before, after=key.snapshot())
    transaction.on_commit(lambda: keystate.invalidate(key.key_id))
    return key


@transaction.atomic
def revoke_key(*, actor: Actor, key: ApiKey) -> ApiKey:
    """Refused at once by every gateway process: the revocation set in Redis is checked on admission."""
    gate.require(actor, "apikey.manage", key)
    updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()
    if updated:
        audit.record(actor, "apikey.revoke", key, after=key.snapshot())
        # Written before the transaction commits; a rolled-back revocation only errs on the safe side.
        keystate.mark_revoked(key.key_id)
        transaction.on_commit(lambda: keystate.invalidate(key.key_id))
    return key

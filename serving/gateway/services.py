"""Team API keys: created by a team's owner or developer, the secret shown once, revocation immediate.

Who controls spend (capabilities ``apikey.manage`` and ``apikey.limits``):
- owners and developers (``apikey.manage``) create keys, revoke them, and change what a key may call
  (scopes) and from where (allowed IPs);
- a key's rate limits and monthly budgets are set freely only by the team's owners and platform admins
  (``apikey.limits``), who also edit the team's ``KeyPolicy``. A developer's new key takes the policy's
  ceiling for each limit it leaves out and is refused above a ceiling (an explicit "no limit" included),
  and a developer cannot change the limits of an existing key at all: lowering is done by an owner too,
  so that no one but an owner moves a number an owner set.
"""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate, secrets_hashing
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Forbidden, Invalid
from serving.gateway import keycache, keystate, limits
from serving.gateway.models import ApiKey, KeyPolicy
from serving.models import Endpoint

KEY_PREFIX = "slm"
LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "monthly_token_budget", "monthly_budget")
# The range of each limit (and policy ceiling): what the columns hold, and no number that means nothing.
LIMIT_BOUNDS: dict[str, tuple[Any, Any]] = {
    "rpm_limit": (1, 1_000_000_000),
    "tpm_limit": (1, 1_000_000_000),
    "monthly_token_budget": (1, 10**15),
    "monthly_budget": (Decimal("0.01"), Decimal("9999999999.99")),
}
LIMIT_LABELS = {
    "rpm_limit": "requests per minute",
    "tpm_limit": "tokens per minute",
    "monthly_token_budget": "tokens per month",
    "monthly_budget": "money per month",
}
MAX_SCOPES = 100
MAX_ALLOWED_IPS = 100
# The furthest a key's expiry may be set: ten years (no expiry at all is the empty value).
MAX_KEY_LIFETIME = timedelta(days=3653)


class _Unchanged:
    """The value of an argument the caller left out (``None`` means "no limit")."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


def _check_ips(ranges: list[str]) -> list[str]:
    if len(ranges) > MAX_ALLOWED_IPS:
        raise Invalid(f"allowed_ips: at most {MAX_ALLOWED_IPS} addresses or ranges.")
    cleaned = []
    for value in ranges:
        try:
            if "%" in value:  # an IPv6 zone (fe80::1%eth0) names a local interface, never a client's address
                raise ValueError(value)
            cleaned.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise Invalid(f"allowed_ips: {value[:60]!r} is not an IP address or CIDR range.") from None
    return cleaned


def _check_scopes(team: Team, scopes: list[str], kept=()) -> list[str]:
    """``kept``: names the key holds already, accepted though no longer callable (unshared or deleted since):
    dropped, a key restricted to them would be allowed every endpoint."""
    if len(scopes) > MAX_SCOPES:
        raise Invalid(f"scopes: at most {MAX_SCOPES} endpoints; leave it empty to allow every endpoint.")
    scopes = sorted({s.strip() for s in scopes if s.strip()})
    # The team's own endpoints and those shared with it: what its keys may call (access.may_call).
    known = set(Endpoint.objects.callable_by(team).filter(name__in=scopes).values_list("name", flat=True))
    unknown = [s for s in scopes if s not in known and s not in kept]
    if unknown:
        raise Invalid(f"scopes: {team.name} has no endpoint {unknown[0][:63]!r}, nor one shared with it.")
    return scopes


def _check_limit(name: str, value):
    """A limit within its range, or None (no limit)."""
    if value is None:
        return None
    low, high = LIMIT_BOUNDS[name]
    if name == "monthly_budget":
        value = Decimal(value)
        if not value.is_finite() or value != value.quantize(Decimal("0.01")):
            raise Invalid(
                f"{name}: give an amount with at most two decimals.", fields={name: ["Not an amount."]}
            )
    if not low <= value <= high:
        raise Invalid(
            f"{name}: between {low} and {high}, or empty for no limit.", fields={name: ["Out of range."]}
        )
    return value


def _aware(moment: datetime | None) -> datetime | None:
    # A time without a zone is taken as UTC, as every time in the API is.
    return moment.replace(tzinfo=UTC) if moment is not None and timezone.is_naive(moment) else moment


def policy_for(team: Team) -> KeyPolicy:
    """The team's key policy; a team whose owners never set one has no ceilings."""
    return KeyPolicy.objects.filter(team=team).select_related("team").first() or KeyPolicy(team=team)


def _within_policy(policy: KeyPolicy, limits: dict) -> dict:
    """A developer's limits: the ceiling where left out, refused above it (no limit included)."""
    result = {}
    for name, ceiling in policy.ceilings().items():
        value = limits.get(name, UNCHANGED)
        if value is UNCHANGED:
            value = ceiling
        elif ceiling is not None and (value is None or value > ceiling):
            asked = "no limit" if value is None else f"{value}"
            raise Invalid(
                f"{name}: the team's key policy allows at most {ceiling} {LIMIT_LABELS[name]} per key "
                f"(asked: {asked}); an owner of {policy.team.name} can set more.",
                code="over_policy",
                fields={name: [f"At most {ceiling}."]},
            )
        result[name] = value
    return result


# The platform's own keys (an eval run's, a distillation's) lapse on their own after this long, should
# their worker die before revoking them; work still going then loses its remaining calls.
SERVICE_KEY_LIFETIME = timedelta(hours=24)


def _check_room_for_a_key(team: Team) -> None:
    """Per-key ceilings (requests and tokens a minute, a month's tokens) bound a team only as far as its
    keys are counted: a team holds at most ``PORTFOLIO_KEYS_PER_TEAM`` usable keys of its own, counted
    under its row's lock. The platform's service keys are bounded by the jobs that make them."""
    Team.objects.select_for_update(no_key=True).filter(pk=team.pk).first()
    usable = (
        ApiKey.objects.filter(team=team, service=False, revoked_at__isnull=True)
        .exclude(expires_at__lte=timezone.now())
        .count()
    )
    if usable >= settings.KEYS_PER_TEAM:
        raise Conflict(
            f"{team.name} holds {usable} usable keys, the most a team may ({settings.KEYS_PER_TEAM}); "
            "revoke one it no longer uses first.",
            code="too_many_keys",
        )


@transaction.atomic
def create_key(
    *,
    actor: Actor,
    team: Team,
    name: str,
    scopes: list[str] | None = None,
    allowed_ips: list[str] | None = None,
    rpm_limit: int | None = UNCHANGED,
    tpm_limit: int | None = UNCHANGED,
    monthly_token_budget: int | None = UNCHANGED,
    monthly_budget: Decimal | None = UNCHANGED,
    expires_at: datetime | None = None,
    service: bool = False,
) -> tuple[ApiKey, str]:
    """Return the key and its secret, which is never stored and never shown again.

    A limit left out is the team policy's ceiling for an actor bound by the policy (see the module
    docstring), else no limit; ``None`` is no limit, refused where the policy sets a ceiling."""
    gate.require(actor, "apikey.manage", team)
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise Invalid("name: Give the key a name of 1-100 characters.")
    expires_at = _aware(expires_at)
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid("expires_at: must be in the future.")
    if expires_at is not None and expires_at - timezone.now() > MAX_KEY_LIFETIME:
        # Past the year 9999 in UTC, PostgreSQL stores it and psycopg cannot read it back: the team's keys
        # could no longer be listed or revoked.
        raise Invalid(
            f"expires_at: at most {MAX_KEY_LIFETIME.days // 365} years ahead; leave it out for no expiry."
        )
    given = {
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "monthly_token_budget": monthly_token_budget,
        "monthly_budget": monthly_budget,
    }
    limits = {field: _check_limit(field, value) for field, value in given.items() if value is not UNCHANGED}
    if gate.can(actor, "apikey.limits", team):
        limits = {field: limits.get(field) for field in LIMIT_FIELDS}
    else:
        limits = _within_policy(policy_for(team), limits)
    if not service:
        _check_room_for_a_key(team)
    issued = secrets_hashing.issue(KEY_PREFIX)
    key = ApiKey.objects.create(
        team=team,
        name=name,
        key_id=issued.key_id,
        secret_hash=issued.hash,
        scopes=_check_scopes(team, scopes or []),
        allowed_ips=_check_ips(allowed_ips or []),
        expires_at=expires_at,
        service=service,
        created_by=actor.user,
        **limits,
    )
    audit.record(actor, "apikey.create", key, after=key.snapshot())
    return key, issued.plaintext


# A service key in use has its expiry moved a lifetime ahead at most this often, so that work longer than
# SERVICE_KEY_LIFETIME keeps its key while a dead worker's key still lapses a lifetime after its last use.
SERVICE_KEY_RENEW_AFTER = timedelta(hours=1)


@transaction.atomic
def renew_service_key(*, actor: Actor, key_pk: int) -> bool:
    """Move an active service key's expiry to a lifetime from now (audited); False if it is revoked."""
    key = (
        ApiKey.objects.select_for_update(of=("self",))
        .select_related("team")
        .filter(pk=key_pk, service=True, revoked_at__isnull=True)
        .first()
    )
    if key is None:
        return False
    before = key.snapshot()
    key.expires_at = timezone.now() + SERVICE_KEY_LIFETIME
    key.save(update_fields=["expires_at"])
    audit.record(actor, "apikey.update", key, before=before, after=key.snapshot())
    transaction.on_commit(lambda: keystate.invalidate(key.key_id))
    return True


def revoke_service_keys(*, actor: Actor, team_id: int, names: list[str]) -> int:
    """Revoke the team's active service keys named ``names``: those a job's worker, killed, could not revoke
    itself. Each revocation is audited in its own transaction."""
    revoked = 0
    for key in ApiKey.objects.filter(team_id=team_id, service=True, revoked_at__isnull=True, name__in=names):
        with transaction.atomic():
            revoke_key(actor=actor, key=key)
        revoked += 1
    return revoked


@transaction.atomic
def update_key(
    *,
    actor: Actor,
    key: ApiKey,
    scopes: list[str] = UNCHANGED,
    allowed_ips: list[str] = UNCHANGED,
    rpm_limit: int | None = UNCHANGED,
    tpm_limit: int | None = UNCHANGED,
    monthly_token_budget: int | None = UNCHANGED,
    monthly_budget: Decimal | None = UNCHANGED,
) -> ApiKey:
    """Change what is given, keep what is left out (``None`` is "no limit"). Changing a limit or budget
    needs ``apikey.limits`` (an owner or admin); scopes and addresses need ``apikey.manage``."""
    gate.require(actor, "apikey.manage", key)
    key = ApiKey.objects.select_for_update(of=("self",)).select_related("team").get(pk=key.pk)
    if key.revoked_at is not None:
        raise Conflict("This key is revoked; its settings can no longer be changed.")
    if key.service and actor.kind != "system":
        raise Conflict(f"{key.name} is the platform's key for that job: its settings are the job's.")
    before = key.snapshot()
    changed = []
    if scopes is not UNCHANGED:
        key.scopes = _check_scopes(key.team, scopes, kept=key.scopes)
        changed.append("scopes")
    if allowed_ips is not UNCHANGED:
        key.allowed_ips = _check_ips(allowed_ips)
        changed.append("allowed_ips")
    given = {
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "monthly_token_budget": monthly_token_budget,
        "monthly_budget": monthly_budget,
    }
    for field, value in given.items():
        if value is UNCHANGED:
            continue
        value = _check_limit(field, value)
        if value == getattr(key, field):
            continue  # a full replacement that repeats a limit does not change it
        if not gate.can(actor, "apikey.limits", key):
            raise Forbidden(
                f"{field}: only an owner of {key.team.name} (or a platform admin) changes a key's limits and budgets."
            )
        setattr(key, field, value)
        changed.append(field)
    if changed:
        key.save(update_fields=changed)
        audit.record(actor, "apikey.update", key, before=before, after=key.snapshot())
        if {"monthly_token_budget", "monthly_budget"} & set(changed):
            _raise_budget_counters(key)
        transaction.on_commit(lambda: keystate.invalidate(key.key_id))
    return key


def _raise_budget_counters(key: ApiKey) -> None:
    """Start the gateway's counters of the key's monthly budgets from its usage this month, as a team's hard
    limit starts from the month's spend (billing.budgets.set_budget): a budget set mid-month must not
    forget what the key already spent. Written before the commit, as a revocation is: a counter only ever
    rises to what was spent, so a rolled-back change leaves nothing wrong."""
    now = time.time()
    _, start = limits.month_of(now)
    tokens, money = keycache.month_spend(key.pk, start)  # as the gateway measures it when loading the key
    limits.raise_key_budgets(
        keystate.client(),
        key.key_id,
        now,
        tokens=tokens if key.monthly_token_budget is not None else None,
        money_micros=money if key.monthly_budget is not None else None,
    )


@transaction.atomic
def revoke_key(*, actor: Actor, key: ApiKey) -> ApiKey:
    """Refused at once by every gateway process: the revocation set in Redis is checked on admission. A job's
    service key is revoked by the job as it ends; by a person only with ``apikey.limits`` (an owner, an admin:
    a kill switch), as whoever else manages keys could fail a job they may not start, its calls billed."""
    gate.require(actor, "apikey.manage", key)
    if key.service and actor.kind != "system" and not gate.can(actor, "apikey.limits", key):
        raise Forbidden(
            f"{key.name} is the platform's key for that job: cancel the job to stop it (only an owner of the "
            "team, or a platform admin, revokes it by hand)."
        )
    updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()
    if updated:
        audit.record(actor, "apikey.revoke", key, after=key.snapshot())
        # Written before the transaction commits; a rolled-back revocation only errs on the safe side.
        keystate.mark_revoked(key.key_id)
        transaction.on_commit(lambda: keystate.invalidate(key.key_id))
    return key


@transaction.atomic
def update_key_policy(
    *,
    actor: Actor,
    team: Team,
    rpm_limit: int | None = UNCHANGED,
    tpm_limit: int | None = UNCHANGED,
    monthly_token_budget: int | None = UNCHANGED,
    monthly_budget: Decimal | None = UNCHANGED,
) -> KeyPolicy:
    """Set the ceilings the team's developers' keys are held to (what is left out stays; None: no ceiling).
    Existing keys keep their limits: an owner changes those on each key."""
    gate.require(actor, "apikey.limits", team)
    # A team without a row has no ceilings, exactly as a row without values: creating one changes nothing.
    policy, _ = (
        KeyPolicy.objects.select_for_update(of=("self",)).select_related("team").get_or_create(team=team)
    )
    before = policy.snapshot()
    given = {
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "monthly_token_budget": monthly_token_budget,
        "monthly_budget": monthly_budget,
    }
    changed = []
    for field, value in given.items():
        if value is UNCHANGED:
            continue
        value = _check_limit(field, value)
        if value != getattr(policy, field):
            setattr(policy, field, value)
            changed.append(field)
    if changed:
        policy.updated_at, policy.updated_by = timezone.now(), actor.user
        policy.save(update_fields=[*changed, "updated_at", "updated_by"])
        audit.record(actor, "keypolicy.update", policy, before=before, after=policy.snapshot())
    return policy

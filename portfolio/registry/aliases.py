"""Removing an alias from a model (moving one is ``services.promote``): a version that held one could not be
archived until another version was promoted to it.

A guarded alias (``production``) is removed by an owner only, with a reason: the next version promoted to it
replaces no holder, so no eval score is compared and no endpoint that followed it gets a rollout."""

from __future__ import annotations

from django.db import transaction

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Invalid, NotFound
from portfolio.registry.models import Alias, Model
from portfolio.registry.services import GUARDED_ALIASES

MAX_REASON = 500  # as a promotion's force reason


@transaction.atomic
def remove_alias(*, actor: Actor, model: Model, alias: str, reason: str = "") -> Alias:
    """Remove ``alias`` from ``model``; the audit row names the version it pointed to, and the reason.
    Returns the removed alias (unsaved), naming that version."""
    gate.require(actor, "model.promote", model)
    alias, reason = alias.strip().lower(), reason.strip()
    if len(reason) > MAX_REASON:
        raise Invalid(f"reason: at most {MAX_REASON} characters.", fields={"reason": ["Too long."]})
    # Locked as promote locks it: a promotion or removal at the same time waits, then finds what this left.
    # Its version read after the lock, not joined to it: a row moved meanwhile failed the join's recheck.
    held = Alias.objects.select_for_update(of=("self",)).filter(model=model, name=alias).first()
    if held is None:
        raise NotFound(f"{model.name} has no alias {alias!r}.")
    if alias in GUARDED_ALIASES:
        gate.require(actor, "model.promote_force", model)
        if not reason:
            raise Invalid(
                f"reason: say why {alias} is removed; endpoints follow it.",
                fields={"reason": ["Required to remove a guarded alias."]},
            )
    before = {"alias": alias, "version": held.version.label}
    held.delete()
    after: dict = {"alias": alias, "version": None}
    if reason:
        after["reason"] = reason
    audit.record(actor, "model.alias_remove", model, before=before, after=after)
    return held

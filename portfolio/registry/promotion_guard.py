"""The guard on a guarded alias (``production``): the promotion checks other apps register (training: eval
scores) compare the candidate with the alias's holder, and what they find refuses the promotion unless an
owner (``model.promote_force``) forces it with a reason, which the audit row keeps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.errors import Conflict
from portfolio.registry.models import ModelVersion


@dataclass(frozen=True)
class Finding:
    """What a promotion check holds against a candidate: it scores below the holder ("0.500 vs 0.700 on
    tickets v1"), or it has no score where the holder has one (``unscored``, the check's own words)."""

    text: str
    unscored: bool = False


# Given a candidate and the alias's holder, what a check finds against the candidate.
PromotionCheck = Callable[[ModelVersion, ModelVersion], list[Finding]]


def require_passed(
    checks: Sequence[PromotionCheck],
    *,
    actor: Actor,
    version: ModelVersion,
    holder: ModelVersion,
    alias: str,
    force_reason: str,
) -> None:
    """Refuse moving ``alias`` from ``holder`` to ``version`` where a check finds something, unless an owner
    gives a reason: an engineer's reason is refused (``Forbidden``), as is no reason (``Conflict``)."""
    found = [finding for check in checks for finding in check(version, holder)]
    if not found:
        return
    if not force_reason:
        raise _refusal(version, holder, alias, found)
    gate.require(actor, "model.promote_force", version.model)


def _refusal(version: ModelVersion, holder: ModelVersion, alias: str, found: list[Finding]) -> Conflict:
    below = [f.text for f in found if not f.unscored]
    unscored = [f.text for f in found if f.unscored]
    said = []
    if below:
        said.append(f"scores below the current {alias} {holder.label} ({'; '.join(below)})")
    if unscored:
        said.append(f"is {'; '.join(unscored)}")
    if below:
        return Conflict(
            f"{version.label} {' and '.join(said)}. An owner may promote it anyway with a reason.",
            code="score_regression",
        )
    return Conflict(
        f"{version.label} {said[0]}: evaluate it first, or an owner promotes it with a reason.",
        code="not_evaluated",
    )

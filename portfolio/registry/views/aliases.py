"""Removing an alias from a model's page or a version's page (moving one is the version page's promotion)."""

from __future__ import annotations

import re

from django.urls import reverse
from django.views.decorators.http import require_POST

from portfolio import buttons
from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.registry import aliases
from portfolio.registry.models import Model


@require_POST
def alias_remove(request, name: str, alias: str):
    """Permission: visible (else 404) and ``model.promote`` (owner or engineer, else 403); a guarded alias
    (production) also ``model.promote_force`` (owners, else 403) and a reason, refused as a message without
    one. An alias the model does not have: 404. Back to the version page it was removed from (``version``),
    else the model's page."""
    actor = actor_of(request)
    model = gate.get_visible(actor, Model, name=name)
    gate.require(actor, "model.promote", model)
    number = request.POST.get("version", "")
    if re.fullmatch(r"[0-9]{1,9}", number):
        back = reverse("version-detail", kwargs={"name": model.name, "number": int(number)})
    else:
        back = reverse("model-detail", kwargs={"name": model.name})
    return buttons.press(
        request,
        lambda: aliases.remove_alias(
            actor=actor, model=model, alias=alias, reason=request.POST.get("reason", "")
        ),
        success=lambda removed: f"{removed.name} removed: it pointed to {removed.version.label}.",
        back=back,
    )

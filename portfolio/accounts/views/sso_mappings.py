"""The single sign-on mapping rules page: which Keycloak groups and roles give which teams and roles here.
Auditors read it; platform admins add and remove rules (htmx swaps the rules card)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from portfolio import htmx
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.forms import SsoMappingForm
from portfolio.accounts.models import SsoMappingRule
from portfolio.accounts.sso import config as sso_config
from portfolio.accounts.sso import rules
from portfolio.accounts.views import directory
from portfolio.errors import Conflict, Invalid, NotFound
from portfolio.formviews import submit


def _page(request, actor: Actor, *, form=None, notice: str = "", error: str = ""):
    can_manage = gate.can(actor, "user.manage")
    config = sso_config.current()
    context = {
        "rules": SsoMappingRule.objects.select_related("team", "department").order_by("kind", "value", "id"),
        "can_manage": can_manage,
        "form": form or (SsoMappingForm() if can_manage else None),
        "organisation": config.organisation if config is not None else "",
        "sso_on": config is not None,
        "client_id": config.client_id if config is not None else "",
        "notice": notice,
        "error": error,
        **directory.context(actor),
    }
    return htmx.page_or_fragment(
        request, "accounts/sso_mappings.html", "accounts/partials/sso_mappings.html", context
    )


def _changed(request, actor: Actor, notice: str):
    if wants_fragment(request):
        return _page(request, actor, notice=notice)
    messages.success(request, notice)
    return redirect("sso-mapping-list")


@require_GET
def sso_mapping_list(request):
    """Permission: ``user.view`` (auditor or platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "user.view")
    return _page(request, actor)


@require_POST
def sso_mapping_add(request):
    """Permission: ``user.manage`` (platform admin). Audited as ``sso_mapping.create``."""
    actor = actor_of(request)
    gate.require(actor, "user.manage")
    form = SsoMappingForm(request.POST)
    done = submit(
        request,
        form,
        lambda: rules.create_rule(actor=actor, **form.cleaned_data),
        then=lambda rule: _changed(request, actor, f"Rule added: {rule}. It applies at each next sign-in."),
    )
    if done is not None:
        return done
    if not wants_fragment(request):
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect("sso-mapping-list")
    return _page(request, actor, form=form)


@require_POST
def sso_mapping_delete(request, pk: int):
    """Permission: ``user.manage`` (platform admin). Audited as ``sso_mapping.delete``."""
    actor = actor_of(request)
    gate.require(actor, "user.manage")
    rule = SsoMappingRule.objects.select_related("team", "department").filter(pk=pk).first()
    if rule is None:
        raise NotFound("Mapping rule not found.")
    label = str(rule)
    try:
        rules.delete_rule(actor=actor, rule=rule)
    except (Invalid, Conflict) as exc:
        if wants_fragment(request):
            return _page(request, actor, error=exc.message)
        messages.error(request, exc.message)
        return redirect("sso-mapping-list")
    return _changed(request, actor, f"Rule removed: {label}. It stops applying at each next sign-in.")

"""The dashboard (what the actor may see, in figures, and what the platform does) and the roles matrix."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from portfolio.accounts import gate
from portfolio.accounts.capabilities import (
    ADMIN,
    AUDITOR,
    DEVELOPER,
    ENGINEER,
    ORG_ACTIONS,
    OWNER,
    VIEWER,
    matrix_rows,
)
from portfolio.accounts.choices import OrgRole
from portfolio.accounts.context import actor_of
from portfolio.accounts.models import Department, ExternalIdentity, Membership, PersonalToken, Team
from portfolio.accounts.sso import config as sso_config
from portfolio.audit.models import AuditEvent

User = get_user_model()
# What the platform does, with the pages of each part: a page not built yet is shown as "coming soon".
CAPABILITIES = [
    (
        "Model registry",
        "Register base models and keep every version with lineage and checksums.",
        [("Models", "model-list")],
    ),
    (
        "Fine-tuning and distillation",
        "LoRA, full and distillation runs on GPU or CPU pools.",
        [("Training", "training-list")],
    ),
    (
        "Deployments and endpoints",
        "vLLM replicas on on-prem pools behind an OpenAI-compatible gateway.",
        [("Deployments", "deployment-list"), ("Endpoints", "endpoint-list")],
    ),
    (
        "API keys, usage and billing",
        "Per-team keys with limits and budgets; chargeback per department.",
        [("API keys", "apikey-list"), ("Usage", "usage"), ("Billing", "billing")],
    ),
]


def _capabilities() -> list[dict]:
    def url(name: str) -> str | None:
        try:
            return reverse(name)
        except NoReverseMatch:
            return None

    rows = []
    for name, description, pages in CAPABILITIES:
        links = [{"label": label, "url": url(url_name)} for label, url_name in pages]
        rows.append(
            {
                "name": name,
                "description": description,
                "links": links,
                "available": any(link["url"] for link in links),
            }
        )
    return rows


def _sso_organisation(user) -> str | None:
    """The organisation's name if ``user`` signs in through single sign-on ("" when it has none), else None."""
    if not ExternalIdentity.objects.filter(user=user).exists():
        return None
    config = sso_config.current()
    return config.organisation if config is not None else ""


@require_GET
def dashboard(request):
    """Permission: any signed-in user; every figure counts only what ``gate.visible`` lets them see."""
    actor = actor_of(request)
    memberships = (
        gate.visible(actor, Membership)
        .filter(user=request.user)
        .select_related("team__department")
        .order_by("team__name")
    )
    counts = [
        ("Departments", gate.visible(actor, Department).count(), "department-list"),
        ("Teams", gate.visible(actor, Team).count(), "team-list"),
        ("Active personal tokens", gate.visible(actor, PersonalToken).active().count(), "token-list"),
    ]
    if gate.can(actor, "user.view"):
        counts.append(("Active users", User.objects.filter(is_active=True).count(), "user-list"))
    recent_events = None
    if gate.can(actor, "audit.view"):
        recent_events = list(gate.visible(actor, AuditEvent).order_by("-sequence")[:10])
    return render(
        request,
        "dashboard.html",
        {
            "memberships": memberships,
            "counts": counts,
            "recent_events": recent_events,
            "org_roles": [OrgRole(role).label for role in sorted(actor.org_roles)],
            "capabilities": _capabilities(),
            # A person signed on from the organisation's realm with no team: their groups map to none.
            "sso_organisation": _sso_organisation(request.user) if not memberships else None,
        },
    )


ROLE_COLUMNS = [
    (ADMIN, "Platform admin"),
    (AUDITOR, "Auditor"),
    (OWNER, "Owner"),
    (ENGINEER, "Engineer"),
    (DEVELOPER, "Developer"),
    (VIEWER, "Viewer"),
]


@require_GET
def roles(request):
    """Permission: any signed-in user. The matrix documents who may do what; it grants nothing."""
    actor = actor_of(request)
    groups: dict[str, list] = {}
    for action, allowed in matrix_rows():
        cells = [(label, allowed[role]) for role, label in ROLE_COLUMNS]
        scope = "Organisation" if action in ORG_ACTIONS else "Team"
        groups.setdefault(action.split(".")[0], []).append({"action": action, "scope": scope, "cells": cells})
    my_roles = [OrgRole(role).label for role in sorted(actor.org_roles)]
    return render(
        request,
        "roles.html",
        {"groups": groups, "columns": [label for _, label in ROLE_COLUMNS], "my_org_roles": my_roles},
    )

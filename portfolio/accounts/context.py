"""The request's actor, and what every page's layout needs from it: the navigation the actor may see."""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import NoReverseMatch, reverse

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor


def actor_of(request) -> Actor:
    """The actor for this request, built once (its roles are read from the database on first use)."""
    user = request.user if request.user.is_authenticated else None
    actor = getattr(request, "_portfolio_actor", None)
    if actor is None or actor.user is not user:
        # Rebuilt after a login or logout within the same request.
        actor = Actor.for_request(request)
        request._portfolio_actor = actor
    return actor


@dataclass(frozen=True)
class NavItem:
    label: str
    url_name: str
    # The capability that makes the item worth showing; None: every signed-in user.
    capability: str | None = None
    # Capabilities still to be built: shown greyed until a view with this URL name exists.
    planned: bool = False


NAVIGATION: tuple[tuple[str, tuple[NavItem, ...]], ...] = (
    ("", (NavItem("Dashboard", "dashboard"),)),
    (
        "Organisation",
        (
            NavItem("Departments", "department-list", "department.view"),
            NavItem("Teams", "team-list", "team.view"),
            NavItem("Users", "user-list", "user.view"),
            NavItem("Single sign-on", "sso-mapping-list", "user.view"),
            NavItem("Roles", "roles"),
        ),
    ),
    (
        "Models and serving",
        (
            NavItem("Portfolio", "portfolio", "model.view", planned=True),
            NavItem("Models", "model-list", "model.view", planned=True),
            NavItem("Training", "training-list", "model.view", planned=True),
            NavItem("Deployments", "deployment-list", "model.view", planned=True),
            NavItem("Endpoints", "endpoint-list", "model.view", planned=True),
            NavItem("Pools", "pool-list", planned=True),
        ),
    ),
    (
        "Access and cost",
        (
            NavItem("API keys", "apikey-list", "usage.view", planned=True),
            NavItem("Personal tokens", "token-list"),
            NavItem("Usage", "usage", "usage.view", planned=True),
            NavItem("Billing", "billing", "billing.view"),
        ),
    ),
    (
        "Compliance",
        (NavItem("Audit log", "audit-log", "audit.view"),),
    ),
)


def _url(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


def nav_sections(request, actor: Actor) -> list[dict]:
    sections = []
    for title, items in NAVIGATION:
        entries = []
        for item in items:
            if item.capability and not gate.can(actor, item.capability):
                continue
            url = _url(item.url_name)
            if url is None and not item.planned:
                continue
            if url is None:
                active = False
            elif url == "/":
                active = request.path == "/"
            else:
                active = request.path.startswith(url)
            entries.append({"label": item.label, "url": url, "active": active, "soon": url is None})
        if entries:
            sections.append({"title": title, "items": entries})
    return sections


def navigation(request):
    """Template context: the current ``actor`` and the ``nav_sections`` they may see."""
    if not hasattr(request, "user") or not request.user.is_authenticated:
        return {"actor": None, "nav_sections": []}
    actor = actor_of(request)
    return {"actor": actor, "nav_sections": nav_sections(request, actor)}


def wants_fragment(request) -> bool:
    """An htmx call swapping part of a page (a history restore needs the whole page)."""
    htmx = getattr(request, "htmx", None)
    if not htmx:
        return False
    return not htmx.history_restore_request

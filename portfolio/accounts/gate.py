"""The one permission gate, used by the UI, the REST API and the gateway alike.

- ``visible(actor, Model)`` starts every query: what an actor may not see does not exist for them.
- ``allowed(actor, Model, action)`` narrows it to what they may do ``action`` on (the teams to offer on a
  form, say), as NetBox's ``restrict(user, action)``.
- ``require(actor, action, obj)`` answers 404 (``NotFound``) for an object the actor may not see and
  403 (``Forbidden``) for one they may see but not change, deciding from the capability matrix.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from portfolio.accounts.actor import Actor
from portfolio.accounts.capabilities import MANAGER, ORG_ACTIONS, allowed_roles, role_allows
from portfolio.errors import Forbidden, NotFound


def visible(actor: Actor, model: Any) -> models.QuerySet:
    return model.objects.visible_to(actor)


def allowed(actor: Actor, model: Any, action: str) -> models.QuerySet:
    """What of ``model`` the actor sees and may do ``action`` on, one query for ``can`` on each: all they
    see where their organisation roles allow it, else what the teams in which their role does own."""
    seen = model.objects.visible_to(actor)  # a scoping.TeamScopedQuerySet
    org_roles = set(actor.org_roles)
    if role_allows(org_roles, action):
        return seen
    return seen.of_teams(
        [team for team, role in actor.team_roles.items() if role_allows(org_roles | {role}, action)]
    )


def get_visible(actor: Actor, model: Any, **lookup) -> Any:
    try:
        return visible(actor, model).get(**lookup)
    except (model.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"{str(model._meta.verbose_name).capitalize()} not found.") from None


def team_of(obj) -> int | None:
    """The team that owns an object, for team-scoped roles; None for org-level objects."""
    from portfolio.accounts.models import Team

    if isinstance(obj, Team):
        return obj.pk
    return getattr(obj, "team_id", None) or getattr(obj, "owner_team_id", None)


def department_of(obj) -> int | None:
    """The department an object belongs to, for department roles: its own, or its team's."""
    from portfolio.accounts.models import Department, Team

    if isinstance(obj, Department):
        return obj.pk
    if isinstance(obj, Team):
        return obj.department_id
    if getattr(obj, "department_id", None) is not None:
        return obj.department_id
    team = getattr(obj, "team", None) or getattr(obj, "owner_team", None)
    return team.department_id if isinstance(team, Team) else None


def roles_for(actor: Actor, obj=None) -> set[str]:
    roles = set(actor.org_roles)
    team_id = team_of(obj) if obj is not None else None
    if team_id is not None and team_id in actor.team_roles:
        roles.add(actor.team_roles[team_id])
    if (
        obj is not None
        and actor.managed_department_ids
        and department_of(obj) in actor.managed_department_ids
    ):
        roles.add(MANAGER)
    return roles


def can(actor: Actor, action: str, obj=None) -> bool:
    allowed_roles(action)  # unknown actions are a programming error, not a "no"
    if action not in ORG_ACTIONS and obj is None and not actor.is_admin:
        # A team-scoped action with no object asks "in any of my teams?".
        held = set(actor.team_roles.values()) | ({MANAGER} if actor.managed_department_ids else set())
        return any(role_allows({role}, action) for role in held) or role_allows(set(actor.org_roles), action)
    return role_allows(roles_for(actor, obj), action)


def require(actor: Actor, action: str, obj=None) -> None:
    if actor.user is None and actor.system is None and actor.api_key_id is None:
        raise Forbidden("Authentication required.")
    if obj is not None and obj.pk is not None and not visible(actor, type(obj)).filter(pk=obj.pk).exists():
        raise NotFound(f"{str(type(obj)._meta.verbose_name).capitalize()} not found.")
    if not can(actor, action, obj):
        raise Forbidden(f"Your role does not allow {action}.")

"""Declarations of the permission decision of each route, shared by the per-app route tables and
tests/test_route_permissions.py (which checks every route against them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    """scope: public | signed_in (any user) | own (the caller's own object) | org (org-wide action)
    | billing (checked by tests/billing/test_permissions.py)
    | team (an object of the team the role users belong to; outsiders get 404) | any_team (an action held
    in any team of one's own: the outsider, owner of another team, holds what owners hold)."""

    scope: str
    action: str = ""
    method: str = "GET"
    data: dict = field(default_factory=dict)
    json: bool = False


def ui(scope: str, action: str = "", method: str = "GET", **data) -> Rule:
    return Rule(scope, action, method, data)


def rest(scope: str, action: str = "", method: str = "GET", **data) -> Rule:
    return Rule(scope, action, method, data, json=True)

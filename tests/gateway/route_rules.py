"""The permission decision of each gateway page (API keys and usage), for tests/test_route_permissions.py,
and where their URL arguments come from (``UI_KWARGS``): ``key_id`` is the world's key of ``team_id``."""

from __future__ import annotations

from tests.permissions import Rule, ui

UI_ROUTES: dict[str, Rule] = {
    # The page lists only the teams whose keys the caller manages (all, read-only, to auditors).
    "apikey-list": ui("signed_in"),
    "apikey-create": ui("team", "apikey.manage", "POST", name="ci key", team="{team_id}", rpm_limit="60"),
    "apikey-edit": ui("team", "apikey.manage", "POST", rpm_limit="10", allowed_ips="10.0.0.0/8"),
    "apikey-revoke": ui("team", "apikey.manage", "POST"),
    # Every signed-in user sees the usage of the teams they can see.
    "usage": ui("signed_in"),
}

# URL keyword argument -> the world value it takes, per route (routes not named here take none).
UI_KWARGS: dict[str, dict[str, str]] = {
    "apikey-edit": {"pk": "key_id"},
    "apikey-revoke": {"pk": "key_id"},
}


def ui_kwargs(route: str, values: dict) -> dict:
    return {kwarg: values[key] for kwarg, key in UI_KWARGS.get(route, {}).items()}

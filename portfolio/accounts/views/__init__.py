"""Web pages of the organisation: signing in (``auth``), the dashboard and roles matrix (``dashboard``),
departments and teams (``organisation``), a team's members (``members``), users and their offboarding
(``users``), personal access tokens (``tokens``), single sign-on (``sso``) and its mapping rules
(``sso_mappings``).

Every view decides access explicitly with the gate (``gate.require`` / ``gate.get_visible`` /
``gate.visible`` / ``gate.can``); the docstrings say which capability each page needs. Changes go
through ``accounts.services``; a ``DomainError`` becomes a form error, while ``NotFound`` and
``Forbidden`` propagate to Django's 404 and 403 pages.

The views are named here for ``accounts.urls``.
"""

from portfolio.accounts.views.auth import login_view, logout_view, password_change
from portfolio.accounts.views.dashboard import dashboard, roles
from portfolio.accounts.views.directory import sso_sync
from portfolio.accounts.views.members import member_add, member_remove, member_role, team_detail
from portfolio.accounts.views.organisation import (
    department_create,
    department_detail,
    department_edit,
    department_list,
    department_manager_add,
    department_manager_remove,
    team_create,
    team_edit,
    team_list,
)
from portfolio.accounts.views.sso import sso_backchannel_logout, sso_callback, sso_login
from portfolio.accounts.views.sso_mappings import sso_mapping_add, sso_mapping_delete, sso_mapping_list
from portfolio.accounts.views.tokens import token_create, token_list, token_revoke
from portfolio.accounts.views.users import (
    user_create,
    user_deactivate,
    user_detail,
    user_list,
    user_reactivate,
    user_roles,
)

__all__ = [
    "dashboard",
    "department_create",
    "department_detail",
    "department_edit",
    "department_list",
    "department_manager_add",
    "department_manager_remove",
    "login_view",
    "logout_view",
    "member_add",
    "member_remove",
    "member_role",
    "password_change",
    "roles",
    "sso_backchannel_logout",
    "sso_callback",
    "sso_login",
    "sso_mapping_add",
    "sso_mapping_delete",
    "sso_mapping_list",
    "sso_sync",
    "team_create",
    "team_detail",
    "team_edit",
    "team_list",
    "token_create",
    "token_list",
    "token_revoke",
    "user_create",
    "user_deactivate",
    "user_detail",
    "user_list",
    "user_reactivate",
    "user_roles",
]

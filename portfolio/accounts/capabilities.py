"""The capability matrix: which role may do what. Every permission check derives from this table.

Team-scoped actions are decided by the actor's role in the object's team; org-scoped actions by the
actor's organisation role. A platform admin may do everything; nothing else is implied.
"""

from __future__ import annotations

from portfolio.accounts.choices import DepartmentRoleName, OrgRole, TeamRole

OWNER, ENGINEER, DEVELOPER, VIEWER = TeamRole.OWNER, TeamRole.ENGINEER, TeamRole.DEVELOPER, TeamRole.VIEWER
ADMIN, AUDITOR = OrgRole.ADMIN, OrgRole.AUDITOR
MANAGER = DepartmentRoleName.MANAGER  # held over every team of one department
TEAM_MEMBERS = frozenset({OWNER, ENGINEER, DEVELOPER, VIEWER})

MATRIX: dict[str, frozenset[str]] = {
    # Organisation
    "department.view": TEAM_MEMBERS | {AUDITOR},
    "department.create": frozenset({ADMIN}),
    "department.change": frozenset({ADMIN}),
    "team.view": TEAM_MEMBERS | {AUDITOR},
    "team.create": frozenset({ADMIN}),
    "team.change": frozenset({OWNER}),
    "team.delete": frozenset({ADMIN}),
    "member.view": TEAM_MEMBERS | {AUDITOR},
    "member.manage": frozenset({OWNER}),
    "user.view": frozenset({AUDITOR}),
    "user.manage": frozenset({ADMIN}),
    # Audit and compliance
    "audit.view": frozenset({AUDITOR}),
    "audit.export": frozenset({AUDITOR}),
    # Capabilities filled by later parts of the platform; decided here so the matrix stays whole.
    "model.view": TEAM_MEMBERS | {AUDITOR},
    "model.register": frozenset({OWNER, ENGINEER}),
    "model.promote": frozenset({OWNER, ENGINEER}),
    "model.promote_force": frozenset({OWNER}),
    "training.run": frozenset({OWNER, ENGINEER}),
    "deployment.manage": frozenset({OWNER, ENGINEER}),
    "endpoint.call": frozenset({OWNER, ENGINEER, DEVELOPER}),
    # Developers create and revoke keys within the ceilings of the team's key policy; only owners (and
    # admins) set a key's limits and budgets and the policy itself: whoever answers for spend controls it.
    "apikey.manage": frozenset({OWNER, DEVELOPER}),
    "apikey.limits": frozenset({OWNER}),
    "usage.view": TEAM_MEMBERS | {AUDITOR},
    "billing.view": frozenset({OWNER, AUDITOR, MANAGER}),
    # Billing: admins set prices and re-issue statements; budgets inside a team are its owners' to lower.
    "price.manage": frozenset({ADMIN}),
    "statement.reissue": frozenset({ADMIN}),
    "budget.manage": frozenset({OWNER, MANAGER}),
    "endpoint.share": frozenset({OWNER}),
    "pool.manage": frozenset({ADMIN}),
}

# Actions whose subject is the whole organisation, not one team's object.
ORG_ACTIONS = frozenset(
    {
        "department.create",
        "team.create",
        "user.view",
        "user.manage",
        "audit.view",
        "audit.export",
        "pool.manage",
        "price.manage",
        "statement.reissue",
    }
)


def allowed_roles(action: str) -> frozenset[str]:
    try:
        return MATRIX[action]
    except KeyError:
        raise KeyError(f"Unknown action {action!r}: add it to the capability matrix.") from None


def role_allows(roles: set[str], action: str) -> bool:
    return ADMIN in roles or bool(roles & allowed_roles(action))


def matrix_rows() -> list[tuple[str, dict[str, bool]]]:
    """The matrix as a table for the UI and docs: one row per action, one column per role."""
    columns = [ADMIN, AUDITOR, MANAGER, OWNER, ENGINEER, DEVELOPER, VIEWER]
    return [(action, {role: role_allows({role}, action) for role in columns}) for action in MATRIX]

"""Who may do what, written out here independently of ``portfolio/accounts/capabilities.py``.

The route matrix (``tests/test_route_permissions.py``) asks the capability matrix what each role should be
answered; on its own it would follow a grant widened there by mistake. This table pins the matrix: widening
(or narrowing) a grant takes a deliberate edit here too. Platform admins may do everything, in every row.
"""

from __future__ import annotations

import pytest

from portfolio.accounts import capabilities

MEMBERS = {"owner", "engineer", "developer", "viewer"}

GRANTS: dict[str, set[str]] = {
    # Organisation
    "department.view": MEMBERS | {"auditor"},
    "department.create": {"admin"},
    "department.change": {"admin"},
    "team.view": MEMBERS | {"auditor"},
    "team.create": {"admin"},
    "team.change": {"owner"},
    "team.delete": {"admin"},
    "member.view": MEMBERS | {"auditor"},
    "member.manage": {"owner"},
    "user.view": {"auditor"},
    "user.manage": {"admin"},
    # Audit
    "audit.view": {"auditor"},
    "audit.export": {"auditor"},
    # Models, training, serving
    "model.view": MEMBERS | {"auditor"},
    "model.register": {"owner", "engineer"},
    "model.promote": {"owner", "engineer"},
    "model.promote_force": {"owner"},
    "training.run": {"owner", "engineer"},
    "deployment.manage": {"owner", "engineer"},
    "endpoint.call": {"owner", "engineer", "developer"},
    "endpoint.share": {"owner"},
    "pool.manage": {"admin"},
    # Keys and usage
    "apikey.manage": {"owner", "developer"},
    "apikey.limits": {"owner"},
    "usage.view": MEMBERS | {"auditor"},
    # Billing
    "billing.view": {"owner", "auditor", "manager"},
    "price.manage": {"admin"},
    "statement.reissue": {"admin"},
    "budget.manage": {"owner", "manager"},
}

ORG_WIDE = {
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

ROLES = ["admin", "auditor", "manager", "owner", "engineer", "developer", "viewer"]


def test_the_capability_matrix_grants_exactly_what_this_table_says():
    assert {action: set(roles) for action, roles in capabilities.MATRIX.items()} == GRANTS
    assert set(capabilities.ORG_ACTIONS) == ORG_WIDE


@pytest.mark.parametrize("action", sorted(GRANTS))
def test_each_role_is_allowed_an_action_only_as_the_table_says(action):
    for role in ROLES:
        assert capabilities.role_allows({role}, action) == (role == "admin" or role in GRANTS[action]), role

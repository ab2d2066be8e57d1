"""The permission matrix of every billing route (and of department manager grants), role by role.

Readers of billing: admins and auditors everything; a department manager their department whole; a
team owner their own teams' lines. A signed-in caller who reads no billing is refused the lists (403)
and finds no department's statement (404); a manager of another department finds nothing of this one.
Only admins set prices, re-issue statements and grant department roles.
"""

from __future__ import annotations

import pytest
from django.db import transaction

from tests.billing.route_rules import API_ROUTES
from tests.billing.world import ROLES, label

pytestmark = pytest.mark.django_db

# The status each role gets from each route: one row per route, one column per role (tests/billing/world.py).
STATUSES = """
route                                                admin auditor manager other_manager owner engineer developer nobody anonymous
GET /billing/prices                                  200   200     200     200           200   403      403       403    401
POST /billing/prices                                 201   403     403     403           403   403      403       403    401
GET /billing/prices/subjects                         200   200     200     200           200   403      403       403    401
GET /billing/spend                                   200   200     200     200           200   403      403       403    401
GET /billing/statements                              200   200     200     200           200   403      403       403    401
GET /billing/statements/{department}/{month}         200   200     200     404           200   404      404       404    401
POST /billing/statements/{statement_id}/reissue      201   403     403     404           403   404      404       404    401
POST /billing/departments/{department_id}/statements/{month}/export 200 200 200 404   200   404      404       404    401
GET /billing/budgets                                 200   200     200     200           200   403      403       403    401
PUT /billing/budgets/teams/{team_id}                 200   403     200     404           200   403      403       404    401
DELETE /billing/budgets/teams/{team_id}              204   403     204     404           403   403      403       404    401
PUT /billing/budgets/departments/{department_id}     200   403     403     404           403   404      404       404    401
DELETE /billing/budgets/departments/{department_id}  204   403     403     404           403   404      404       404    401
GET /departments/{department_id}/roles               200   200     200     404           200   200      200       404    401
POST /departments/{department_id}/roles              201   403     403     404           403   403      403       404    401
DELETE /departments/{department_id}/roles/{user_id}  204   403     403     404           403   403      403       404    401
"""

# How each route is called: the URL (filled from the world) and the JSON body, if any.
REQUESTS: dict[str, tuple[str, dict | None]] = {
    "GET /billing/prices": ("/billing/prices", None),
    "POST /billing/prices": (
        "/billing/prices",
        {"kind": "pool", "subject": "local-cpu", "cpu_core_hour": "0.75"},
    ),
    "GET /billing/prices/subjects": ("/billing/prices/subjects?kind=pool", None),
    "GET /billing/spend": ("/billing/spend?month={past}", None),
    "GET /billing/statements": ("/billing/statements", None),
    "GET /billing/statements/{department}/{month}": ("/billing/statements/CC-100/{past}", None),
    "POST /billing/statements/{statement_id}/reissue": (
        "/billing/statements/{statement}/reissue",
        {"reason": "Replica hours recorded late."},
    ),
    # The export reads the statement as its page does: an owner gets their teams' lines (marked partial).
    "POST /billing/departments/{department_id}/statements/{month}/export": (
        "/billing/departments/{department}/statements/{past}/export?format=csv",
        None,
    ),
    # Budgets: a team's owners lower its amount within the ceiling; its department's managers set all of it.
    "GET /billing/budgets": ("/billing/budgets", None),
    "PUT /billing/budgets/teams/{team_id}": ("/billing/budgets/teams/{team}", {"amount": "400"}),
    "DELETE /billing/budgets/teams/{team_id}": ("/billing/budgets/teams/{team}", None),
    "PUT /billing/budgets/departments/{department_id}": (
        "/billing/budgets/departments/{department}",
        {"amount": "4000"},
    ),
    "DELETE /billing/budgets/departments/{department_id}": (
        "/billing/budgets/departments/{department}",
        None,
    ),
    # Department roles: the department is seen by its teams' members, its managers and org-wide roles.
    "GET /departments/{department_id}/roles": ("/departments/{department}/roles", None),
    "POST /departments/{department_id}/roles": ("/departments/{department}/roles", {"username": "nobody"}),
    "DELETE /departments/{department_id}/roles/{user_id}": (
        "/departments/{department}/roles/{manager}",
        None,
    ),
}


def _matrix(table: str) -> dict[str, dict[str, int]]:
    """``route -> {role: status}`` from the table above, which must name every role, in ``ROLES`` order."""
    header, *rows = table.strip().splitlines()
    roles = header.split()[1:]
    assert roles == ROLES, f"the table's columns are the roles: {roles} != {ROLES}"
    matrix = {}
    for row in rows:
        method, path, *statuses = row.split()
        matrix[f"{method} {path}"] = dict(zip(roles, map(int, statuses), strict=True))
    return matrix


MATRIX = _matrix(STATUSES)


def test_every_billing_route_is_in_the_matrix():
    """Every operation the route matrix leaves to this file (scope "billing"), wherever it is declared."""
    from tests.test_route_permissions import API_ROUTES as ALL_ROUTES

    assert set(API_ROUTES) <= set(MATRIX)
    assert {route for route, rule in ALL_ROUTES.items() if rule.scope == "billing"} <= set(MATRIX)
    assert set(MATRIX) == set(REQUESTS)


@pytest.mark.parametrize("route", sorted(MATRIX))
def test_route_answers_each_role_as_the_matrix_says(world, call, route):
    method = route.split()[0]
    template, body = REQUESTS[route]
    url = "/api/v1" + template.format(
        past=label(world.past),
        statement=world.statement.pk,
        department=world.department.pk,
        team=world.team.pk,
        manager=world.users["manager"].pk,
    )
    mismatches = []
    for role, expected in MATRIX[route].items():
        with transaction.atomic():
            response = call(world, role, method, url, body)
            if response.status_code != expected:
                mismatches.append(f"{role}: expected {expected}, got {response.status_code}")
            elif response.status_code >= 400:
                assert set(response.json()["error"]) >= {"code", "message", "request_id"}
            transaction.set_rollback(True)
    assert not mismatches, f"{route}: " + "; ".join(mismatches)


def test_a_hidden_statement_says_nothing_of_the_department(world, call):
    response = call(world, "other_manager", "GET", f"/api/v1/billing/statements/CC-100/{label(world.past)}")
    assert response.status_code == 404
    assert b"Customer Operations" not in response.content and b"Support AI" not in response.content


def test_a_reader_of_nothing_is_told_so_on_the_lists(world, call):
    response = call(world, "engineer", "GET", "/api/v1/billing/spend")
    assert response.status_code == 403
    assert "billing.view" in response.json()["error"]["message"]

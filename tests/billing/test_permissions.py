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

READERS = {"admin": 200, "auditor": 200, "manager": 200, "other_manager": 200, "owner": 200}
NO_READER = {"engineer": 403, "developer": 403, "nobody": 403, "anonymous": 401}


def _statuses(**given: int) -> dict[str, int]:
    assert set(given) == set(ROLES), f"every role has its expected status: {set(ROLES) ^ set(given)}"
    return given


# route -> (method, url template, body, expected status per role)
MATRIX = {
    "GET /billing/prices": ("GET", "/billing/prices", None, _statuses(**READERS, **NO_READER)),
    "POST /billing/prices": (
        "POST",
        "/billing/prices",
        {"kind": "pool", "subject": "local-cpu", "cpu_core_hour": "0.75"},
        _statuses(
            admin=201,
            auditor=403,
            manager=403,
            other_manager=403,
            owner=403,
            engineer=403,
            developer=403,
            nobody=403,
            anonymous=401,
        ),  # fmt: skip
    ),
    "GET /billing/prices/subjects": (
        "GET",
        "/billing/prices/subjects?kind=pool",
        None,
        _statuses(**READERS, **NO_READER),
    ),  # fmt: skip
    "GET /billing/spend": ("GET", "/billing/spend?month={past}", None, _statuses(**READERS, **NO_READER)),
    "GET /billing/statements": ("GET", "/billing/statements", None, _statuses(**READERS, **NO_READER)),
    "GET /billing/statements/{department}/{month}": (
        "GET",
        "/billing/statements/CC-100/{past}",
        None,
        _statuses(
            admin=200,
            auditor=200,
            manager=200,
            other_manager=404,
            owner=200,
            engineer=404,
            developer=404,
            nobody=404,
            anonymous=401,
        ),  # fmt: skip
    ),
    "POST /billing/statements/{statement_id}/reissue": (
        "POST",
        "/billing/statements/{statement}/reissue",
        {"reason": "Replica hours recorded late."},
        _statuses(
            admin=201,
            auditor=403,
            manager=403,
            other_manager=404,
            owner=403,
            engineer=404,
            developer=404,
            nobody=404,
            anonymous=401,
        ),  # fmt: skip
    ),
    # Department roles: the department is seen by its teams' members, its managers and org-wide roles.
    "GET /departments/{department_id}/roles": (
        "GET",
        "/departments/{department}/roles",
        None,
        _statuses(
            admin=200,
            auditor=200,
            manager=200,
            other_manager=404,
            owner=200,
            engineer=200,
            developer=200,
            nobody=404,
            anonymous=401,
        ),  # fmt: skip
    ),
    "POST /departments/{department_id}/roles": (
        "POST",
        "/departments/{department}/roles",
        {"username": "nobody"},
        _statuses(
            admin=201,
            auditor=403,
            manager=403,
            other_manager=404,
            owner=403,
            engineer=403,
            developer=403,
            nobody=404,
            anonymous=401,
        ),  # fmt: skip
    ),
    "DELETE /departments/{department_id}/roles/{user_id}": (
        "DELETE",
        "/departments/{department}/roles/{manager}",
        None,
        _statuses(
            admin=204,
            auditor=403,
            manager=403,
            other_manager=404,
            owner=403,
            engineer=403,
            developer=403,
            nobody=404,
            anonymous=401,
        ),  # fmt: skip
    ),
}


def test_every_billing_route_is_in_the_matrix():
    assert set(API_ROUTES) <= set(MATRIX)


@pytest.mark.parametrize("route", sorted(MATRIX))
def test_route_answers_each_role_as_the_matrix_says(world, call, route):
    method, template, body, statuses = MATRIX[route]
    url = "/api/v1" + template.format(
        past=label(world.past),
        statement=world.statement.pk,
        department=world.department.pk,
        manager=world.users["manager"].pk,
    )
    mismatches = []
    for role in ROLES:
        with transaction.atomic():
            response = call(world, role, method, url, body)
            if response.status_code != statuses[role]:
                mismatches.append(f"{role}: expected {statuses[role]}, got {response.status_code}")
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

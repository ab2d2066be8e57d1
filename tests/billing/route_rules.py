"""Billing's REST routes for tests/test_route_permissions.py: each declared, and checked for every role
(department managers included) in tests/billing/test_permissions.py."""

from tests.permissions import Rule

BILLING = Rule("billing")

API_ROUTES: dict[str, Rule] = {
    "GET /billing/prices": BILLING,
    "POST /billing/prices": BILLING,
    "GET /billing/prices/subjects": BILLING,
    "GET /billing/spend": BILLING,
    "GET /billing/statements": BILLING,
    "GET /billing/statements/{department}/{month}": BILLING,
    "POST /billing/statements/{statement_id}/reissue": BILLING,
}

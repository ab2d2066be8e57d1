"""The gateway's in-memory record of an API key, for tests of what reads it (limits, routes, meters) without
a key row: no scopes, networks, limits or budgets unless a test sets them."""

from __future__ import annotations

import uuid

from serving.gateway.keycache import KeyRecord


def key_record(**fields) -> KeyRecord:
    values = {
        "pk": 1,
        "key_id": uuid.uuid4().hex[:12],
        "secret_hash": "",
        "team_id": 1,
        "team": "t",
        "department_id": 1,
        "scopes": frozenset(),
        "networks": (),
        "rpm_limit": None,
        "tpm_limit": None,
        "monthly_token_budget": None,
        "monthly_budget_micros": None,
        "expires_at": None,
        "revoked": False,
    }
    return KeyRecord(**(values | fields))

"""The audit list's filters are served by an index, not by reading the whole trail.

Each test asks PostgreSQL for the plan of the queryset the real filter builds, with sequential scans priced
out (SET LOCAL enable_seqscan = off, in the test's transaction): the named index must then be the one that
carries the filter's condition (an Index Cond, not a Filter over a full index scan)."""

import json

import pytest
from django.db import connection, transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

ACTIONS = ["team.create", "team.update", "department.create", "deployment.create"]


@pytest.fixture
def trail():
    """Events of several actions by several actors."""
    with transaction.atomic():
        for n in range(120):
            audit.record(
                Actor.for_system(f"worker-{n % 6}"),
                ACTIONS[n % len(ACTIONS)],
                object_type="test",
                object_id=str(n),
                after={"n": n},
            )


def _index_conditions(selection: AuditFilter) -> dict[str, str]:
    """{index name: its Index Cond} in the plan of the audit list's query for ``selection``."""
    events = selection.apply(AuditEvent.objects.all()).order_by("-sequence")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = json.loads(events.explain(format="json"))
    found: dict[str, str] = {}

    def walk(node: dict) -> None:
        if "Index Name" in node:
            found[node["Index Name"]] = node.get("Index Cond", "")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


@pytest.mark.parametrize("action", ["team.", "team.create"], ids=["prefix", "exact"])
def test_the_action_filter_is_served_by_the_action_index(trail, action):
    conditions = _index_conditions(AuditFilter(action=action))
    assert "action" in conditions.get("audit_action_prefix", ""), conditions


def test_the_actor_filter_is_served_by_the_actor_index(trail):
    conditions = _index_conditions(AuditFilter(actor="system:worker-3"))
    assert "actor_label" in conditions.get("audit_actor_label", ""), conditions

"""``serving.adapter_holding``: one rule, as a query and in Python, for where an adapter is served (loaded at the
version attached now); routing, rollouts, the canary judge, serving speed and the deployment page use it."""

from __future__ import annotations

import pytest

from serving import adapter_holding
from serving.models import Replica
from tests.serving.conftest import deploy
from tests.serving.views.conftest import add_replica

ATTACHED = {"tone": 7, "legal": 9}
CASES = [
    (["tone", "legal"], {"tone": 7, "legal": 9}, ["tone", "legal"]),
    (["tone"], {"tone": 8}, []),  # held at another version: being reloaded
    (["tone"], {}, []),  # loaded before versions were recorded: reloaded
    ([], {"tone": 7}, []),  # asked, not confirmed (a load that timed out)
    (["gone"], {"gone": 3}, []),  # no longer attached: being unloaded
    (["tone"], ["not", "a", "dict"], []),
]


@pytest.mark.parametrize(("loaded", "versions", "served"), [*CASES, (None, None, [])])
def test_an_adapter_is_served_where_it_is_loaded_at_the_version_attached(loaded, versions, served):
    replica = Replica(loaded_adapters=loaded, adapter_versions=versions)
    assert adapter_holding.served(replica, ATTACHED) == served
    assert [n for n in ATTACHED if adapter_holding.holds(replica, n, ATTACHED[n])] == served


@pytest.mark.parametrize(("versions", "held"), [({}, False), ({"tone": None}, True), ({"tone": 7}, False)])
def test_a_version_of_none_is_held_only_where_none_was_recorded(versions, held):
    """As the query: a name loaded with no version recorded (before versions were) holds no version, None
    included; ``holds`` took a missing entry for None."""
    replica = Replica(loaded_adapters=["tone"], adapter_versions=versions)
    assert adapter_holding.holds(replica, "tone", None) is held


@pytest.mark.django_db
def test_the_query_finds_the_replicas_the_python_rule_does(owner, team, base_version, pool, node):
    deployment = deploy(owner, team, base_version, pool)
    replicas = [
        add_replica(deployment, node, port=8200 + i, loaded_adapters=loaded, adapter_versions=versions)
        for i, (loaded, versions, _) in enumerate(CASES)
    ]
    for name, version in ATTACHED.items():
        found = Replica.objects.filter(adapter_holding.holding(name, version))
        assert set(found.values_list("pk", flat=True)) == {replicas[0].pk}, name

"""The pools page: each node's reserved capacity, its 5 s refresh, node actions for platform admins,
and the new-pool form."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from serving import services
from serving.choices import NodeState, PoolKind
from serving.models import ComputePool, Node
from tests.serving.nodes import GIB, add_node
from tests.serving.views.conftest import HTMX, add_replica, audited

pytestmark = pytest.mark.django_db


def test_the_pools_page_shows_each_nodes_reserved_capacity(signed_in, org, deployment, node):
    add_replica(deployment, node)
    add_node(
        deployment.pool,
        "gpu-box",
        gpus=[{"index": 0, "name": "NVIDIA L4", "memory_bytes": 24 * GIB}],
    )
    response = signed_in(org["viewer"]).get(reverse("pool-list"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "cpu-pool" in page and "cpu-01" in page
    assert "3.6 / 24.0 GiB" in page  # RAM reserved by the replica
    assert "1 / 2" in page  # cores
    assert "GPU 0" in page and "0.0 / 24.0 GiB" in page
    assert "every team" in page
    assert 'hx-trigger="every 5s"' in page


def test_a_nodes_address_is_shown_to_pool_managers_only(signed_in, org, node):
    Node.objects.filter(pk=node.pk).update(address="10.9.8.7")
    for role in ("owner", "engineer", "viewer", "auditor"):
        for fragment in ({}, HTMX):
            page = signed_in(org[role]).get(reverse("pool-list"), **fragment).content.decode()
            assert "cpu-01" in page and "10.9.8.7" not in page, role
    assert "10.9.8.7" in signed_in(org["admin"]).get(reverse("pool-list")).content.decode()


def test_the_pools_page_refresh_answers_only_the_pools_section(signed_in, org, node):
    response = signed_in(org["viewer"]).get(reverse("pool-list"), **HTMX)
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith('<div id="pools"')
    assert b"<html" not in response.content


def test_a_pool_restricted_to_another_team_is_not_shown(signed_in, org, admin, other_team, node):
    services.create_pool(actor=admin, name="legal-gpu", kind=PoolKind.GPU, teams=[other_team])
    page = signed_in(org["owner"]).get(reverse("pool-list")).content.decode()
    assert "cpu-pool" in page
    assert "legal-gpu" not in page


def test_only_a_platform_admin_sees_the_node_actions(signed_in, org, node):
    assert b"Cordon" not in signed_in(org["owner"]).get(reverse("pool-list")).content
    assert b"Cordon" in signed_in(org["admin"]).get(reverse("pool-list")).content


def test_an_admin_drains_a_node_and_it_is_audited(signed_in, org, node):
    response = signed_in(org["admin"]).post(
        reverse("node-state", args=[node.name]), {"state": "draining"}, **HTMX
    )
    assert response.status_code == 200
    assert b"cpu-01 is now draining." in response.content
    node.refresh_from_db()
    assert node.state == NodeState.DRAINING
    event = audited("node.drain", node)
    assert event is not None and event.after["state"] == "draining"


def test_a_team_owner_cannot_change_a_node_state(signed_in, org, node):
    response = signed_in(org["owner"]).post(reverse("node-state", args=[node.name]), {"state": "cordoned"})
    assert response.status_code == 403
    node.refresh_from_db()
    assert node.state == NodeState.READY


def test_a_lost_node_cannot_be_made_ready_by_hand(signed_in, org, node):
    Node.objects.filter(pk=node.pk).update(state=NodeState.LOST)
    response = signed_in(org["admin"]).post(
        reverse("node-state", args=[node.name]), {"state": "ready"}, follow=True
    )
    assert "is lost; it becomes ready again when its agent reports back" in response.content.decode()


def test_an_admin_creates_a_pool_open_to_chosen_teams(signed_in, org, team):
    response = signed_in(org["admin"]).post(
        reverse("pool-create"),
        {
            "name": "gpu-a100",
            "kind": "gpu",
            "teams": [team.pk],
        },
    )
    assert response.status_code == 302
    pool = ComputePool.objects.get(name="gpu-a100")
    assert list(pool.allowed_teams.all()) == [team]
    assert audited("pool.create", pool) is not None


def test_a_pool_name_already_taken_is_shown_on_the_form(signed_in, org, pool):
    response = signed_in(org["admin"]).post(
        reverse("pool-create"),
        {"name": "cpu-pool", "kind": "cpu"},
    )
    assert response.status_code == 200
    assert "A pool named &#x27;cpu-pool&#x27; already exists." in response.content.decode()


def test_the_pools_page_costs_the_same_queries_for_more_nodes(signed_in, org, pool, node):
    client = signed_in(org["viewer"])

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse("pool-list"), **HTMX).status_code == 200
        return len(queries)

    few = count()
    for name in ("cpu-02", "cpu-03", "cpu-04"):
        add_node(pool, name)
    assert count() == few


def test_the_pools_page_shows_the_price_in_force_from_the_price_book(signed_in, org, pool, node):
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from portfolio.billing.choices import PriceKind
    from portfolio.billing.models import Price

    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for when, core_hour in ((hour - timedelta(days=2), "0.0300"), (hour + timedelta(hours=1), "9.0000")):
        Price.objects.create(
            kind=PriceKind.POOL,
            subject_id=str(pool.pk),
            subject_name=pool.name,
            effective_from=when,
            cpu_core_hour=Decimal(core_hour),
        )
    page = signed_in(org["viewer"]).get(reverse("pool-list")).content.decode()
    assert "CPU core-hour" in page and ">0.03<" in page and "9" not in page.split("CPU core-hour")[1][:60]


def test_the_pools_page_says_which_replica_holds_which_cores(signed_in, org, deployment, node):
    add_replica(deployment, node, cpu_ids=[0, 1])
    page = signed_in(org["viewer"]).get(reverse("pool-list")).content.decode()
    assert "<code>0-1</code>" in page and "support-bot #" in page


def test_cores_held_by_another_teams_replica_are_shown_without_its_name(signed_in, org, deployment, node):
    add_replica(deployment, node, cpu_ids=[1])
    page = signed_in(org["outsider"]).get(reverse("pool-list")).content.decode()
    assert "<code>1</code>" in page and "another team&#x27;s replica" in page
    assert "support-bot" not in page

"""The pools page and the nodes API read the capacity of all their pools at once: their queries do not grow with
the number of pools (each pool cost two or three reads of its nodes and replicas), and each node's usage is
what its own pool's capacity read says."""

from __future__ import annotations

import itertools

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from serving.capacity import pool_usage
from serving.choices import PoolKind
from serving.models import ComputePool, Deployment
from tests.serving.nodes import GIB, add_node
from tests.serving.views.conftest import add_replica

pytestmark = pytest.mark.django_db

numbers = itertools.count(1)


@pytest.fixture
def grow(team, base_version):
    """Add pools, every other one of GPUs, each with a node that one replica holds a core (and a GPU) of."""

    def add(count: int) -> None:
        for _ in range(count):
            number = next(numbers)
            gpu = number % 2 == 0
            pool = ComputePool.objects.create(
                name=f"pool-{number:02}", kind=PoolKind.GPU if gpu else PoolKind.CPU
            )
            pool.allowed_teams.add(team)
            gpus = [{"index": 0, "name": "NVIDIA L4", "memory_bytes": 24 * GIB}] if gpu else []
            node = add_node(pool, f"node-{number:02}", cores=4, gpus=gpus)
            deployment = Deployment.objects.create(
                name=f"dep-{number:02}", owner_team=team, version=base_version, pool=pool, replicas=1
            )
            add_replica(deployment, node, cpu_ids=[number % 4], gpu_indices=[0] if gpu else [])

    return add


def _queries(client, url: str, **headers) -> tuple[int, object]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **headers)
    assert response.status_code == 200, response.content[:300]
    return len(queries), response


@pytest.mark.parametrize("who", ["admin", "owner"])
def test_the_pools_page_costs_the_same_queries_for_two_pools_or_six(client, org, grow, who):
    client.force_login(org[who])
    grow(2)
    few, _ = _queries(client, reverse("pool-list"))
    grow(4)
    many, response = _queries(client, reverse("pool-list"))
    assert many == few, (few, many)
    page = response.content.decode()
    holders = [line for line in page.splitlines() if "dep-" in line and " #" in line]
    assert len(holders) >= 6, holders  # every pool's node says which replica holds its core


@pytest.mark.parametrize("who", ["admin", "owner"])
def test_the_nodes_api_costs_the_same_queries_for_two_pools_or_six(client, org, grow, who):
    client.force_login(org[who])
    grow(2)
    few, _ = _queries(client, "/api/v1/nodes")
    grow(4)
    many, response = _queries(client, "/api/v1/nodes")
    assert many == few, (few, many)
    items = response.json()["items"]
    assert len(items) == 6
    for item in items:
        pool = ComputePool.objects.get(name=item["pool"])
        assert item["usage"] == pool_usage(pool)[item["name"]]
        assert item["usage"]["cores_used"] == 1

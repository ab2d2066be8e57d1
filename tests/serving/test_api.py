"""The serving REST API on isolation: where engines listen is shown to pool managers only; a fallback of
another team and what a team may not use are refused in the API's error shape."""

from __future__ import annotations

import pytest

from portfolio.accounts.models import Membership
from portfolio.registry import services as registry
from serving import services
from serving.choices import PoolKind
from serving.models import ComputePool, Endpoint
from tests.conftest import actor_for
from tests.serving.nodes import add_node
from tests.serving.views.conftest import add_replica, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(org, team, other_team):
    """A deployment of the team with one replica on a node; the other team's endpoint on its own model."""
    from portfolio.registry.models import Artifact

    admin, outsider = actor_for(org["admin"]), actor_for(org["outsider"])
    pool = services.create_pool(actor=admin, name="cpu-pool", kind=PoolKind.CPU)
    node = add_node(pool)
    node.address = "10.1.2.3"
    node.save(update_fields=["address"])
    artifact = Artifact.objects.create(
        id="a" * 64, store_uri="file:///a", size_bytes=1, file_count=1, files=[]
    )
    ours = registry.create_model(actor=actor_for(org["engineer"]), name="smollm2", owner_team=team)
    deployment = services.create_deployment(
        actor=admin,
        name="support-bot",
        team=team,
        version=make_version(ours, artifact),
        pool=pool,
        replicas=1,
    )
    add_replica(deployment, node, host="10.1.2.3", port=8101, pid=4242)
    services.create_endpoint(actor=admin, name="support", team=team, routes=[{"deployment": "support-bot"}])
    theirs = registry.create_model(actor=outsider, name="contracts-base", owner_team=other_team)
    services.create_deployment(
        actor=outsider,
        name="contracts-bot",
        team=other_team,
        version=make_version(theirs, artifact),
        pool=pool,
        replicas=0,
    )
    services.create_endpoint(
        actor=outsider, name="contracts", team=other_team, routes=[{"deployment": "contracts-bot"}]
    )
    return {"pool": pool, "theirs": theirs.versions.get()}


@pytest.mark.parametrize("role", ["owner", "engineer", "developer", "viewer", "auditor"])
def test_team_members_do_not_see_where_a_replica_listens(client, org, world, role):
    client.force_login(org[role])
    (replica,) = client.get("/api/v1/deployments/support-bot").json()["replica_set"]
    assert (replica["host"], replica["port"], replica["pid"]) == (None, None, None)
    assert replica["state"] == "ready" and replica["node"] == "cpu-01"
    (node,) = client.get("/api/v1/nodes").json()["items"]
    assert node["address"] is None and node["name"] == "cpu-01"


def test_a_pool_manager_sees_where_a_replica_listens(client, org, world):
    client.force_login(org["admin"])
    (replica,) = client.get("/api/v1/deployments/support-bot").json()["replica_set"]
    assert (replica["host"], replica["port"], replica["pid"]) == ("10.1.2.3", 8101, 4242)
    assert client.get("/api/v1/nodes").json()["items"][0]["address"] == "10.1.2.3"


def test_another_teams_endpoint_as_fallback_is_refused_in_the_apis_error_shape(
    client, org, team, other_team, world
):
    # The repro: an engineer of the team who only views the other team.
    Membership.objects.create(user=org["engineer"], team=other_team, role="viewer")
    client.force_login(org["engineer"])
    response = client.put(
        "/api/v1/endpoints/support/routes",
        {"routes": [{"deployment": "support-bot"}], "fallback": "contracts"},
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["fields"] == {
        "fallback": ["Choose an endpoint of Support AI."]
    }
    assert "contracts belongs to another team" in error["message"] and error["request_id"]
    assert Endpoint.objects.get(name="support").fallback is None
    response = client.post(
        "/api/v1/endpoints",
        {
            "name": "support-2",
            "team_id": team.pk,
            "fallback": "contracts",
            "routes": [{"deployment": "support-bot"}],
        },
        content_type="application/json",
    )
    assert response.status_code == 400 and "fallback" in response.json()["error"]["fields"]
    assert not Endpoint.objects.filter(name="support-2").exists()


def test_a_deployment_refused_for_its_team_answers_400_naming_the_field(client, org, team, other_team, world):
    Membership.objects.create(user=org["engineer"], team=other_team, role="engineer")
    client.force_login(org["engineer"])
    theirs_only = services.create_pool(
        actor=actor_for(org["admin"]), name="contracts-pool", kind=PoolKind.CPU, teams=[other_team]
    )
    add_node(theirs_only, "contracts-01")
    mine = Endpoint.objects.get(name="support").routes.get().deployment.version_id
    response = client.post(
        "/api/v1/deployments",
        {"name": "new-bot", "team_id": team.pk, "version_id": mine, "pool": theirs_only.name, "replicas": 0},
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {"pool": ["Not open to Support AI."]}
    response = client.post(
        "/api/v1/deployments",
        {
            "name": "new-bot",
            "team_id": team.pk,
            "version_id": world["theirs"].pk,
            "pool": "cpu-pool",
            "replicas": 0,
        },
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {"version": ["Not shared with Support AI."]}


def test_an_endpoints_completions_cap_is_set_on_creation_and_changed_alone_audited(client, org, team, world):
    from portfolio.audit.models import AuditEvent

    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/endpoints",
        {"name": "support-n", "team_id": team.pk, "max_n": 2, "routes": [{"deployment": "support-bot"}]},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["max_n"] == 2
    routes = {"routes": [{"deployment": "support-bot"}]}
    assert (
        client.put("/api/v1/endpoints/support-n/routes", routes, content_type="application/json").json()[
            "max_n"
        ]
        == 2
    ), "omitted: unchanged"
    assert (
        client.put(
            "/api/v1/endpoints/support-n/routes", {**routes, "max_n": 4}, content_type="application/json"
        ).json()["max_n"]
        == 4
    )
    change = AuditEvent.objects.filter(action="endpoint.routes").latest("sequence")
    assert (change.before["max_n"], change.after["max_n"]) == (2, 4)
    for bad in (0, 129, "many"):
        response = client.put(
            "/api/v1/endpoints/support-n/routes", {**routes, "max_n": bad}, content_type="application/json"
        )
        assert response.status_code == 422 and "max_n" in response.json()["error"]["fields"]
    assert Endpoint.objects.get(name="support-n").max_n == 4


def test_the_completions_cap_is_bounded_in_the_service_too(org, team, world):
    from portfolio.errors import Invalid

    engineer = actor_for(org["engineer"])
    for bad in (0, 129, True):
        with pytest.raises(Invalid, match="max_n"):
            services.create_endpoint(
                actor=engineer, name="support-x", team=team, max_n=bad, routes=[{"deployment": "support-bot"}]
            )


def test_an_endpoints_routes_and_description_are_bounded_before_anything_is_read(client, org, team, world):
    """Every route is looked up here and on each rebuild of the gateway's routing table: 300,000 of them in
    one 10 MiB body would load the gateway every team shares."""
    from portfolio.errors import Invalid
    from serving.services.endpoints import MAX_ROUTES

    client.force_login(org["engineer"])
    many = {"routes": [{"deployment": "support-bot", "weight": 1}] * (MAX_ROUTES + 1)}
    response = client.put("/api/v1/endpoints/support/routes", many, content_type="application/json")
    assert response.status_code == 422 and "routes" in response.json()["error"]["fields"]
    long = {"name": "wordy", "team_id": team.pk, "description": "x" * 2001, "routes": many["routes"][:1]}
    response = client.post("/api/v1/endpoints", long, content_type="application/json")
    assert response.status_code == 422 and "description" in response.json()["error"]["fields"]
    engineer = actor_for(org["engineer"])
    with pytest.raises(Invalid, match=f"routes: at most {MAX_ROUTES} routes"):
        services.set_routes(actor=engineer, endpoint=Endpoint.objects.get(name="support"), **many)
    with pytest.raises(Invalid, match="description: at most 2000 characters"):
        services.create_endpoint(
            actor=engineer, name="wordy", team=team, description="x" * 2001, routes=many["routes"][:1]
        )
    assert (
        Endpoint.objects.get(name="support").routes.count() == 1
        and not Endpoint.objects.filter(name="wordy").exists()
    )


def test_a_pools_fields_are_bounded_and_its_permission_checked_before_its_teams_are_read(
    client, org, team, django_assert_max_num_queries
):
    from portfolio.errors import Invalid
    from serving.services.pools import MAX_DESCRIPTION

    client.force_login(org["engineer"])
    many = {"name": "big", "kind": "cpu", "allowed_team_ids": list(range(1, 1000))}
    with django_assert_max_num_queries(6):  # the session and the caller's roles; no team is looked up
        response = client.post("/api/v1/pools", many, content_type="application/json")
    assert response.status_code == 403, response.content
    client.force_login(org["admin"])
    too_many = {**many, "allowed_team_ids": list(range(1, 1002))}
    response = client.post("/api/v1/pools", too_many, content_type="application/json")
    assert response.status_code == 422 and "allowed_team_ids" in response.json()["error"]["fields"]
    wordy = {"name": "wordy", "kind": "cpu", "description": "x" * (MAX_DESCRIPTION + 1)}
    response = client.post("/api/v1/pools", wordy, content_type="application/json")
    assert response.status_code == 422 and "description" in response.json()["error"]["fields"]
    with pytest.raises(Invalid, match="description: at most"):
        services.create_pool(actor=actor_for(org["admin"]), name="wordy", kind="cpu", description="x" * 5001)
    assert not ComputePool.objects.filter(name__in=["big", "wordy"]).exists()


def test_a_cascade_is_created_and_reconfigured_through_the_api(client, org, team, world):
    client.force_login(org["engineer"])
    for name in ("support-small", "support-large"):
        services.create_endpoint(
            actor=actor_for(org["engineer"]), name=name, team=team, routes=[{"deployment": "support-bot"}]
        )
    config = {"small": "support-small", "large": "support-large", "threshold": -0.5}
    response = client.post(
        "/api/v1/endpoints",
        {"name": "support-smart", "team_id": team.pk, "kind": "cascade", "config": config},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert (response.json()["kind"], response.json()["config"], response.json()["routes"]) == (
        "cascade",
        config,
        [],
    )
    changed = client.put(
        "/api/v1/endpoints/support-smart/config",
        {"kind": "cascade", "config": {**config, "threshold": -3}},
        content_type="application/json",
    )
    assert changed.status_code == 200 and changed.json()["config"]["threshold"] == -3.0
    refused = client.put(
        "/api/v1/endpoints/support-smart/config",
        {"kind": "router", "config": {"classifier": "support-smart", "routes": {}, "default": "support"}},
        content_type="application/json",
    )
    assert refused.status_code == 400, refused.content
    assert "cannot call itself" in refused.json()["error"]["message"]


def test_scripts_set_the_update_strategy_and_replace_in_place_through_the_api(client, org, world):
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/deployments/support-bot/update-strategy",
        {"update_strategy": "replace"},
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["update_strategy"] == "replace"
    refused = client.post(
        "/api/v1/deployments/support-bot/update-strategy",
        {"update_strategy": "sideways"},
        content_type="application/json",
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid"
    nothing = client.post("/api/v1/deployments/support-bot/replace-in-place")
    assert nothing.status_code == 409 and "No rolling change" in nothing.json()["error"]["message"]
    client.post("/api/v1/deployments/support-bot/restart", {}, content_type="application/json")
    client.post(
        "/api/v1/deployments/support-bot/update-strategy",
        {"update_strategy": "surge"},
        content_type="application/json",
    )
    replacing = client.post("/api/v1/deployments/support-bot/replace-in-place")
    assert replacing.status_code == 200 and replacing.json()["generation"] == 2


def test_a_page_of_nodes_reads_each_pools_capacity_once(client, org, world):
    """Each node's usage came from a read of its whole pool's capacity, once per node: a page of 100 nodes read
    the pool 100 times. Now once per pool on the page, whatever the number of its nodes (here two pools)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(org["admin"])

    def queries_listing() -> tuple[int, list[dict]]:
        with CaptureQueriesContext(connection) as queries:
            items = client.get("/api/v1/nodes").json()["items"]
        return len(queries), items

    other = services.create_pool(actor=actor_for(org["admin"]), name="gpu-less", kind=PoolKind.CPU)
    add_node(other, "other-01", cores=8)
    few, _ = queries_listing()
    for number in range(2, 6):
        add_node(world["pool"], f"cpu-{number:02}")
    for number in range(2, 4):
        add_node(other, f"other-{number:02}", cores=8)
    many, items = queries_listing()
    assert many == few, (few, many)
    usage = {item["name"]: item["usage"] for item in items}
    assert len(usage) == 8
    assert usage["cpu-01"]["cores_total"] == 2 and usage["cpu-01"]["ram_used"] > 0
    assert all(usage[f"cpu-{n:02}"]["ram_used"] == 0 for n in range(2, 6))
    assert all(usage[f"other-{n:02}"]["cores_total"] == 8 for n in range(1, 4))


def test_a_page_of_endpoints_reads_their_routes_in_one_query(client, org, team, world):
    """Found by review: each endpoint's routes were one more query (a page of 50: about 56 queries)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    admin = actor_for(org["admin"])
    client.force_login(org["admin"])

    def queries_listing() -> tuple[int, list[dict]]:
        with CaptureQueriesContext(connection) as queries:
            items = client.get("/api/v1/endpoints").json()["items"]
        return len(queries), items

    few, _ = queries_listing()
    for number in range(5):
        services.create_endpoint(
            actor=admin, name=f"support-{number}", team=team, routes=[{"deployment": "support-bot"}]
        )
    many, items = queries_listing()
    assert many == few, (few, many)
    assert len(items) == 7
    assert {item["routes"][0]["deployment"] for item in items} == {"support-bot", "contracts-bot"}

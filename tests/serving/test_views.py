"""The serving pages: pools with their nodes' capacity, deployments with replicas, timeline, logs and a prompt
box, endpoints with their weighted routes; each behind the permission gate."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from serving import playground, services
from serving.choices import DeploymentStatus, DesiredState, NodeState, PoolKind, ReplicaState
from serving.models import ComputePool, Deployment, DeploymentEvent, Endpoint, Node, Replica
from tests.conftest import actor_for
from tests.serving.route_rules import UI_ROUTES, build_world, ui_kwargs
from tests.test_route_permissions import ROLES, _call, expected, outcome

pytestmark = pytest.mark.django_db

GIB = 1024**3
HTMX = {"HTTP_HX_REQUEST": "true"}
SMOLLM2_SHAPE = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "head_dim": 64,
}


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    """No Celery worker in these tests: reconciles asked for on commit are recorded instead."""
    from serving import tasks

    calls: list[int] = []
    monkeypatch.setattr(
        tasks.reconcile_deployment_task, "delay", lambda deployment_id: calls.append(deployment_id)
    )
    monkeypatch.setattr(tasks, "poke_node", lambda name: None)
    return calls


@pytest.fixture
def signed_in(client):
    def sign_in(user):
        client.force_login(user)
        return client

    return sign_in


@pytest.fixture
def admin(org):
    return actor_for(org["admin"])


@pytest.fixture
def owner(org):
    return actor_for(org["owner"])


@pytest.fixture
def pool(admin):
    return services.create_pool(
        actor=admin, name="cpu-pool", kind=PoolKind.CPU, cpu_core_hour_rate=Decimal("0.0400")
    )


def add_node(pool, name: str = "cpu-01", *, memory_bytes: int = 24 * GIB, cores: int = 2, **fields) -> Node:
    return Node.objects.create(
        name=name,
        pool=pool,
        cpu_cores=cores,
        memory_bytes=memory_bytes,
        state=NodeState.READY,
        heartbeat_at=timezone.now(),
        address="127.0.0.1",
        **fields,
    )


@pytest.fixture
def node(pool):
    return add_node(pool)


@pytest.fixture
def artifact():
    return Artifact.objects.create(
        id="a" * 64, store_uri="file:///store/a", size_bytes=269_060_232, file_count=1, files=[]
    )


def make_version(model, artifact, number: int = 1, **fields) -> ModelVersion:
    values = {
        "kind": VersionKind.BASE,
        "source": Source.LOCAL,
        "artifact": artifact,
        "status": VersionStatus.READY,
        "parameter_count": 134_515_008,
        "shape": SMOLLM2_SHAPE,
        "dtype": "bfloat16",
    } | fields
    return ModelVersion.objects.create(model=model, number=number, **values)


@pytest.fixture
def base_version(org, team, artifact):
    model = registry.create_model(actor=actor_for(org["engineer"]), name="smollm2-135m", owner_team=team)
    return make_version(model, artifact)


@pytest.fixture
def adapter_version(org, team, artifact, base_version):
    model = registry.create_model(actor=actor_for(org["engineer"]), name="support-tone", owner_team=team)
    return make_version(
        model,
        artifact,
        kind=VersionKind.ADAPTER,
        base_version=base_version,
        source=Source.FINE_TUNE,
        parameter_count=1_000_000,
        shape={},
        metrics={"adapter": {"r": 8}},
    )


@pytest.fixture
def deployment(owner, team, base_version, pool, node):
    return services.create_deployment(
        actor=owner, name="support-bot", team=team, version=base_version, pool=pool, replicas=1
    )


def add_replica(deployment, node, *, state=ReplicaState.READY, **fields) -> Replica:
    values = {
        "generation": deployment.generation,
        "state": state,
        "host": "127.0.0.1",
        "port": 8101,
        "pid": 4242,
        "reserved_memory_bytes": int(3.6 * GIB),
        "reserved_cores": 1,
        "last_health_at": timezone.now(),
    } | fields
    return Replica.objects.create(deployment=deployment, node=node, **values)


def deployment_form(version, pool, team, **overrides) -> dict:
    data = {
        "name": "support-bot",
        "team": team.pk,
        "version": version.pk,
        "pool": pool.name,
        "replicas": 1,
        "arg_max_model_len": 2048,
        "arg_dtype": "bfloat16",
        "arg_max_num_seqs": 16,
        "arg_max_loras": 4,
        "arg_max_lora_rank": 16,
        "arg_kv_cache_space_gib": 1,
        "arg_cpu_cores": 1,
    }
    return data | overrides


def audited(action: str, obj) -> AuditEvent | None:
    return AuditEvent.objects.filter(action=action, object_id=str(obj.pk)).order_by("-sequence").first()


# --- Pools -----------------------------------------------------------------------------------------
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
            "gpu_hour_rate": "2.5",
            "cpu_core_hour_rate": "0",
        },
    )
    assert response.status_code == 302
    pool = ComputePool.objects.get(name="gpu-a100")
    assert list(pool.allowed_teams.all()) == [team]
    assert audited("pool.create", pool) is not None


def test_a_pool_name_already_taken_is_shown_on_the_form(signed_in, org, pool):
    response = signed_in(org["admin"]).post(
        reverse("pool-create"),
        {"name": "cpu-pool", "kind": "cpu", "gpu_hour_rate": "0", "cpu_core_hour_rate": "0"},
    )
    assert response.status_code == 200
    assert "A pool named &#x27;cpu-pool&#x27; already exists." in response.content.decode()


# --- Creating a deployment -------------------------------------------------------------------------
def test_an_engineer_creates_a_deployment_from_the_form(
    signed_in, org, team, base_version, pool, node, enqueued, django_capture_on_commit_callbacks
):
    client = signed_in(org["engineer"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("deployment-create"), deployment_form(base_version, pool, team, arg_max_model_len=1024)
        )
    assert response.status_code == 302
    assert response["Location"] == reverse("deployment-detail", args=["support-bot"])
    deployment = Deployment.objects.get(name="support-bot")
    assert deployment.owner_team == team and deployment.replicas == 1
    # Only what differs from the defaults is stored.
    assert deployment.engine_args == {"max_model_len": 1024}
    event = audited("deployment.create", deployment)
    assert event is not None and event.actor_label == "engineer"
    assert enqueued == [deployment.pk]


def test_an_unschedulable_deployment_shows_the_reason_and_creates_nothing(
    signed_in, org, team, base_version, pool
):
    add_node(pool, "small", memory_bytes=2 * GIB)
    response = signed_in(org["engineer"]).post(
        reverse("deployment-create"), deployment_form(base_version, pool, team)
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing was created: this deployment cannot be placed." in page
    assert "Unschedulable on cpu-pool: needs 3.5 GiB of RAM" in page
    assert "the most free is 2.0 GiB and 2 core(s) on small" in page
    assert not Deployment.objects.exists()
    assert not AuditEvent.objects.filter(action="deployment.create").exists()


def test_a_bad_engine_argument_is_shown_next_to_its_field(signed_in, org, team, base_version, pool, node):
    response = signed_in(org["engineer"]).post(
        reverse("deployment-create"), deployment_form(base_version, pool, team, arg_dtype="float16")
    )
    assert response.status_code == 200
    assert "float16 is not supported by vLLM on CPU" in response.content.decode()
    assert not Deployment.objects.exists()


def test_the_form_offers_only_ready_base_versions_and_the_arguments_of_the_pool_kind(
    signed_in, org, base_version, adapter_version, artifact, pool
):
    make_version(base_version.model, artifact, 2, status=VersionStatus.IMPORTING)
    page = signed_in(org["engineer"]).get(reverse("deployment-create") + "?pool=cpu-pool").content.decode()
    assert "smollm2-135m:v1 · 134.5M parameters" in page
    assert "smollm2-135m:v2" not in page  # still importing
    assert "support-tone:v1" not in page  # an adapter: added to a deployment, not deployed
    assert 'data-kind="cpu"' in page
    assert 'data-pools="gpu" hidden' in page  # GPU-only arguments hidden for a CPU pool
    assert "Cores reserved for the replica" in page


def test_a_viewer_may_not_open_the_new_deployment_form(signed_in, org):
    assert signed_in(org["viewer"]).get(reverse("deployment-create")).status_code == 403


def test_a_deployment_cannot_be_named_like_the_new_deployment_page(
    signed_in, org, team, base_version, pool, node
):
    response = signed_in(org["engineer"]).post(
        reverse("deployment-create"), deployment_form(base_version, pool, team, name="new")
    )
    assert "This name is reserved" in response.content.decode()
    assert not Deployment.objects.exists()


# --- The deployments list and a deployment's page ---------------------------------------------------
def test_the_list_shows_ready_and_desired_replicas_with_the_status(signed_in, org, deployment, node):
    add_replica(deployment, node)
    Deployment.objects.filter(pk=deployment.pk).update(
        status=DeploymentStatus.RUNNING, status_detail="1/1 ready"
    )
    page = signed_in(org["viewer"]).get(reverse("deployment-list")).content.decode()
    assert "support-bot" in page and "smollm2-135m:v1" in page
    assert "1 / 1" in page
    assert "running" in page and "1/1 ready" in page
    assert reverse("version-detail", args=["smollm2-135m", 1]) in page


def test_the_list_costs_the_same_queries_for_more_deployments(
    signed_in, org, owner, team, base_version, pool, node
):
    client = signed_in(org["viewer"])

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse("deployment-list")).status_code == 200
        return len(queries)

    services.create_deployment(
        actor=owner, name="bot-a", team=team, version=base_version, pool=pool, replicas=0
    )
    few = count()
    for name in ("bot-b", "bot-c", "bot-d"):
        services.create_deployment(
            actor=owner, name=name, team=team, version=base_version, pool=pool, replicas=0
        )
    assert count() == few


def test_an_outsider_cannot_see_a_deployment_page(signed_in, org, deployment):
    response = signed_in(org["outsider"]).get(reverse("deployment-detail", args=[deployment.name]))
    assert response.status_code == 404
    assert b"support-bot" not in response.content


def test_the_deployment_page_shows_replicas_and_timeline(signed_in, org, deployment, node):
    replica = add_replica(deployment, node, loaded_adapters=["support-tone"])
    DeploymentEvent.objects.create(
        deployment=deployment,
        replica=replica,
        kind="ready",
        message="Replica ready at http://127.0.0.1:8101.",
    )
    page = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name])).content.decode()
    assert "cpu-01" in page and "4242" in page and "127.0.0.1:8101" in page
    assert "support-tone" in page
    assert "Replica ready at http://127.0.0.1:8101." in page
    assert "Created by owner: 1 replica(s) of smollm2-135m:v1." in page
    # Newest first.
    assert page.index("Replica ready at") < page.index("Created by owner")


def test_the_engine_log_is_shown_to_engineers_and_hidden_from_a_viewer(signed_in, org, deployment, node):
    add_replica(deployment, node, log_tail="INFO:     Application startup complete.")
    url = reverse("deployment-detail", args=[deployment.name])
    assert b"Application startup complete." not in signed_in(org["viewer"]).get(url).content
    assert b"Application startup complete." not in signed_in(org["auditor"]).get(url).content
    assert b"Application startup complete." in signed_in(org["engineer"]).get(url).content


def test_the_page_polls_while_a_replica_starts_and_stops_polling_once_stable(
    signed_in, org, deployment, node
):
    replica = add_replica(deployment, node, state=ReplicaState.STARTING)
    client = signed_in(org["viewer"])
    url = reverse("deployment-detail", args=[deployment.name])
    assert b'hx-trigger="every 3s"' in client.get(url).content

    Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.READY)
    Deployment.objects.filter(pk=deployment.pk).update(
        status=DeploymentStatus.RUNNING, status_detail="1/1 ready"
    )
    fragment = client.get(url, **HTMX)
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content
    assert b"hx-trigger" not in fragment.content  # stable: the answer has no trigger, so polling stops
    assert b'id="deployment-timeline" class="card" aria-labelledby="timeline-heading" hx-swap-oob="true"' in (
        fragment.content
    )
    assert b'<span id="deployment-status" hx-swap-oob="true">' in fragment.content


def test_a_viewer_gets_403_on_scale(signed_in, org, deployment):
    response = signed_in(org["viewer"]).post(
        reverse("deployment-scale", args=[deployment.name]), {"replicas": 3}
    )
    assert response.status_code == 403
    deployment.refresh_from_db()
    assert deployment.replicas == 1


def test_an_engineer_scales_a_deployment(signed_in, org, deployment):
    response = signed_in(org["engineer"]).post(
        reverse("deployment-scale", args=[deployment.name]), {"replicas": 3}, follow=True
    )
    assert "Scaling support-bot to 3 replica(s)." in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.replicas == 3
    assert audited("deployment.scale", deployment) is not None


def test_a_running_deployment_cannot_be_deleted_and_a_stopped_one_can(signed_in, org, deployment, node):
    client = signed_in(org["engineer"])
    response = client.post(reverse("deployment-delete", args=[deployment.name]), follow=True)
    assert "Stop the deployment (scale to 0)" in response.content.decode()
    assert Deployment.objects.filter(pk=deployment.pk).exists()

    client.post(reverse("deployment-stop", args=[deployment.name]))
    deployment.refresh_from_db()
    assert deployment.replicas == 0
    assert audited("deployment.stop", deployment) is not None
    response = client.post(reverse("deployment-delete", args=[deployment.name]))
    assert response["Location"] == reverse("deployment-list")
    assert not Deployment.objects.filter(pk=deployment.pk).exists()


def test_a_rolling_update_moves_the_deployment_to_another_version(signed_in, org, deployment, artifact):
    newer = make_version(deployment.version.model, artifact, 2)
    response = signed_in(org["engineer"]).post(
        reverse("deployment-update", args=[deployment.name]), {"version": newer.pk}, follow=True
    )
    assert "Rolling support-bot to smollm2-135m:v2" in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.version == newer and deployment.generation == 2


def test_an_adapter_is_added_and_removed_from_the_page(signed_in, org, deployment, adapter_version):
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("deployment-adapter-add", args=[deployment.name]),
        {"adapter": adapter_version.pk},
        follow=True,
    )
    assert "a rolling restart turns LoRA serving on first" in response.content.decode()
    attached = deployment.adapters.get()
    assert attached.name == "support-bot-support-tone-v1"

    response = client.post(
        reverse("deployment-adapter-remove", args=[deployment.name, attached.name]), follow=True
    )
    assert "removed" in response.content.decode()
    assert not deployment.adapters.exists()


def test_removing_an_adapter_an_endpoint_routes_to_is_refused_with_the_reason(
    signed_in, org, owner, team, deployment, adapter_version
):
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_version, name="tone")
    services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": "support-bot", "adapter": "tone"}]
    )
    response = signed_in(org["engineer"]).post(
        reverse("deployment-adapter-remove", args=[deployment.name, attached.name]), follow=True
    )
    assert "Endpoint(s) support route to tone." in response.content.decode()
    assert deployment.adapters.exists()


# --- The prompt box --------------------------------------------------------------------------------
def test_the_prompt_box_with_no_ready_replica_says_so(signed_in, org, deployment):
    response = signed_in(org["developer"]).post(
        reverse("deployment-try", args=[deployment.name]),
        {"model": "support-bot", "prompt": "Hello", "max_tokens": 16},
        **HTMX,
    )
    assert response.status_code == 200
    assert "No replica is ready yet" in response.content.decode()


def test_the_prompt_box_shows_the_answer_token_counts_and_latency(signed_in, org, deployment, monkeypatch):
    asked = {}

    def answer(**kwargs):
        asked.update(kwargs)
        return playground.TryResult("Bonjour !", 9, 4, 321, 7, "support-bot")

    monkeypatch.setattr(playground, "try_prompt", answer)
    response = signed_in(org["developer"]).post(
        reverse("deployment-try", args=[deployment.name]),
        {"model": "support-bot", "prompt": "Say hello in French", "max_tokens": 16},
        **HTMX,
    )
    page = response.content.decode()
    assert page.lstrip().startswith('<div id="try-result"')
    assert "Bonjour !" in page
    assert "9 prompt tokens" in page and "4 completion tokens" in page and "321 ms" in page
    assert asked["prompt"] == "Say hello in French" and asked["max_tokens"] == 16


def test_a_viewer_has_no_prompt_box_and_is_refused_a_call(signed_in, org, deployment):
    client = signed_in(org["viewer"])
    assert b'id="try"' not in client.get(reverse("deployment-detail", args=[deployment.name])).content
    response = client.post(
        reverse("deployment-try", args=[deployment.name]), {"prompt": "Hi", "model": "support-bot"}
    )
    assert response.status_code == 403


def test_a_developer_sees_the_prompt_box_but_not_the_manage_actions(signed_in, org, deployment):
    page = (
        signed_in(org["developer"]).get(reverse("deployment-detail", args=[deployment.name])).content.decode()
    )
    assert 'id="try"' in page
    assert "Rolling restart" not in page


# --- Endpoints -------------------------------------------------------------------------------------
@pytest.fixture
def endpoint(owner, team, deployment):
    return services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": "support-bot"}]
    )


def routes_data(*rows: tuple[str, str, int], initial: int = 0, **extra) -> dict:
    data = {"routes-TOTAL_FORMS": str(len(rows)), "routes-INITIAL_FORMS": str(initial)}
    for index, (deployment, adapter, weight) in enumerate(rows):
        data |= {
            f"routes-{index}-deployment": deployment,
            f"routes-{index}-adapter": adapter,
            f"routes-{index}-weight": str(weight),
        }
    return data | extra


def test_the_endpoint_editor_saves_weights(signed_in, org, owner, deployment, endpoint, adapter_version):
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_version, name="tone")
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 90), ("support-bot", "tone", 10), ("", "", 100), initial=1),
    )
    assert response.status_code == 302
    routes = {
        (r.adapter.name if r.adapter else None): r.weight for r in endpoint.routes.select_related("adapter")
    }
    assert routes == {None: 90, "tone": 10}
    event = audited("endpoint.routes", endpoint)
    assert event is not None
    assert event.before["routes"] == [{"deployment": "support-bot", "adapter": None, "weight": 100}]

    page = client.get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert "90.0%" in page and "10.0%" in page
    assert '"model": "support"' in page


def test_a_removed_row_is_dropped_and_an_empty_editor_is_refused(signed_in, org, endpoint):
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 100), initial=1, **{"routes-0-DELETE": "on"}),
    )
    assert response.status_code == 200
    assert "Add at least one route" in response.content.decode()
    assert endpoint.routes.count() == 1


def test_a_fallback_loop_is_refused_on_the_form(signed_in, org, owner, team, endpoint):
    other = services.create_endpoint(
        actor=owner, name="support-b", team=team, routes=[{"deployment": "support-bot"}], fallback=endpoint
    )
    response = signed_in(org["engineer"]).post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 100), fallback=other.pk),
    )
    assert response.status_code == 200
    assert "that would make a fallback loop" in response.content.decode()


def test_an_engineer_creates_an_endpoint_with_the_form(signed_in, org, team, deployment):
    response = signed_in(org["engineer"]).post(
        reverse("endpoint-create"),
        {"name": "support", "team": team.pk, "description": "Ticket answers"}
        | routes_data(("support-bot", "", 100)),
    )
    assert response.status_code == 302
    endpoint = Endpoint.objects.get(name="support")
    assert endpoint.routes.get().deployment == deployment
    assert audited("endpoint.create", endpoint) is not None


def test_a_viewer_sees_the_routes_but_not_the_editor(signed_in, org, endpoint):
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert "100.0%" in page
    assert "Edit routes" not in page
    assert (
        signed_in(org["viewer"]).post(reverse("endpoint-routes", args=[endpoint.name]), {}).status_code == 403
    )


def test_an_outsider_sees_no_endpoint_of_another_team(signed_in, org, endpoint):
    client = signed_in(org["outsider"])
    assert b"support-bot" not in client.get(reverse("endpoint-list")).content
    assert client.get(reverse("endpoint-detail", args=[endpoint.name])).status_code == 404


# --- Every serving page against the capability matrix ----------------------------------------------
@pytest.mark.parametrize("name", sorted(UI_ROUTES))
def test_every_serving_page_answers_each_role_as_the_matrix_says(client, org, team, base_version, name):
    world = {"team_id": team.pk, "version_id": base_version.pk}
    world |= build_world(actor=actor_for(org["engineer"]), team=team, version=base_version)
    rule = UI_ROUTES[name]
    url = reverse(name, kwargs=ui_kwargs(name, world))
    mismatches = []
    for role in ROLES:
        with transaction.atomic():
            client.logout()
            got = outcome(_call(client, role, org, rule, url, world), api_call=False)
            if got != expected(rule, role):
                mismatches.append(f"{role}: expected {expected(rule, role)}, got {got}")
            transaction.set_rollback(True)
    assert not mismatches, f"{name} ({rule.method}): " + "; ".join(mismatches)


def test_the_rules_cover_every_serving_page():
    from serving.urls import urlpatterns

    assert {pattern.name for pattern in urlpatterns} == set(UI_ROUTES)


def test_replicas_being_replaced_keep_the_page_polling(signed_in, org, deployment, node):
    add_replica(deployment, node, generation=1, desired=DesiredState.RUNNING)
    Deployment.objects.filter(pk=deployment.pk).update(generation=2, status=DeploymentStatus.RUNNING)
    page = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name])).content
    assert b'hx-trigger="every 3s"' in page


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

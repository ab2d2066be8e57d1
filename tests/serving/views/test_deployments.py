"""The new-deployment form, the deployments list, and a deployment's page with its replicas, timeline
and engine logs, polled while it settles."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.registry.choices import VersionStatus
from serving import services
from serving.choices import DeploymentStatus, DesiredState, ReplicaState
from serving.models import Deployment, DeploymentEvent, Replica
from tests.serving.nodes import GIB, add_node
from tests.serving.views.conftest import HTMX, add_replica, audited, make_version

pytestmark = pytest.mark.django_db


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


def test_the_deployment_page_shows_replicas_and_timeline(
    signed_in, org, owner, deployment, node, adapter_version
):
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_version, name="support-tone")
    loaded = {"loaded_adapters": ["support-tone"], "adapter_versions": {"support-tone": adapter_version.pk}}
    replica = add_replica(deployment, node, **loaded)
    DeploymentEvent.objects.create(
        deployment=deployment,
        replica=replica,
        kind="ready",
        message="Replica ready.",
    )
    page = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name])).content.decode()
    assert "cpu-01" in page
    assert "support-tone" in page
    assert "Replica ready." in page
    assert "Created by owner: 1 replica(s) of smollm2-135m:v1." in page
    # Newest first.
    assert page.index("Replica ready.") < page.index("Created by owner")


@pytest.mark.parametrize("role", ["owner", "engineer", "viewer", "auditor"])
def test_where_a_replica_listens_is_shown_to_pool_managers_only(signed_in, org, deployment, node, role):
    add_replica(deployment, node)
    url = reverse("deployment-detail", args=[deployment.name])
    for fragment in ({}, HTMX):
        page = signed_in(org[role]).get(url, **fragment).content.decode()
        # The pid as its cell shows it: the digits alone also occur in a timestamp's microseconds.
        assert ">4242<" not in page and "127.0.0.1" not in page and "8101" not in page
        assert "cpu-01" in page
    page = signed_in(org["admin"]).get(url).content.decode()
    assert ">4242<" in page and "127.0.0.1:8101" in page


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


def test_replicas_being_replaced_keep_the_page_polling(signed_in, org, deployment, node):
    add_replica(deployment, node, generation=1, desired=DesiredState.RUNNING)
    Deployment.objects.filter(pk=deployment.pk).update(generation=2, status=DeploymentStatus.RUNNING)
    page = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name])).content
    assert b'hx-trigger="every 3s"' in page

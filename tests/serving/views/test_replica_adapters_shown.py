"""A replica's adapters are shown (on the deployment page and in the API) as the gateway routes them: loaded at
the version attached now. Found by the last session's review: a name held at the version attached before (its
reload under way, adapter_sync) was listed as loaded, though the gateway sent it nothing."""

from __future__ import annotations

import pytest
from django.urls import reverse

from serving import services
from serving.choices import DeploymentStatus, ReplicaState
from serving.models import Deployment, Replica
from tests.serving.views.conftest import HTMX, add_replica

pytestmark = pytest.mark.django_db


@pytest.fixture
def held(owner, deployment, node, adapter_version):
    """Two replicas of the deployment: one holding its adapter at the version attached, one at another."""
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_version, name="support-tone")
    deployment.refresh_from_db()  # LoRA turned on: a new generation
    current = add_replica(
        deployment,
        node,
        loaded_adapters=["support-tone"],
        adapter_versions={"support-tone": adapter_version.pk},
    )
    stale = add_replica(
        deployment,
        node,
        port=8102,
        loaded_adapters=["support-tone"],
        adapter_versions={"support-tone": adapter_version.pk + 1000},
    )
    return current, stale


@pytest.mark.parametrize("fragment", [{}, HTMX], ids=["page", "poll"])
def test_the_page_shows_an_adapter_held_at_another_version_as_reloading_not_served(
    signed_in, org, deployment, held, fragment
):
    page = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name]), **fragment)
    html = page.content.decode()
    assert html.count('<span class="badge badge--adapter">support-tone</span>') == 1
    assert html.count("support-tone (reloading)") == 1


def test_the_api_lists_only_the_adapters_a_replica_serves(client, org, deployment, held):
    current, stale = held
    client.force_login(org["viewer"])
    replicas = client.get(f"/api/v1/deployments/{deployment.name}").json()["replica_set"]
    assert {r["id"]: r["loaded_adapters"] for r in replicas} == {current.pk: ["support-tone"], stale.pk: []}


def test_a_replica_still_holding_a_removed_adapter_shows_none(
    signed_in, client, org, owner, deployment, held
):
    services.remove_adapter(actor=owner, attached=deployment.adapters.get())
    client.force_login(org["viewer"])
    replicas = client.get(f"/api/v1/deployments/{deployment.name}").json()["replica_set"]
    assert [r["loaded_adapters"] for r in replicas] == [[], []]
    html = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name])).content.decode()
    assert "support-tone (reloading)" not in html


def test_the_page_polls_while_an_adapter_is_reloaded(signed_in, org, deployment, held):
    """Stable otherwise, the page stopped polling and showed "reloading" until it was reloaded by hand."""
    Deployment.objects.filter(pk=deployment.pk).update(status=DeploymentStatus.RUNNING, replicas=2)
    url = reverse("deployment-detail", args=[deployment.name])
    client = signed_in(org["viewer"])
    assert b'hx-trigger="every 3s"' in client.get(url, **HTMX).content
    current, stale = held
    Replica.objects.filter(pk=stale.pk).update(adapter_versions=current.adapter_versions)
    assert b"hx-trigger" not in client.get(url, **HTMX).content


def test_a_failed_replicas_last_record_of_adapters_is_not_shown_nor_polled_for(
    signed_in, client, org, deployment, held
):
    """Found by review: a failed replica keeps the names it had loaded (nothing reloads them): it was shown
    "reloading", and the page polled for good."""
    Deployment.objects.filter(pk=deployment.pk).update(status=DeploymentStatus.RUNNING, replicas=2)
    current, stale = held
    Replica.objects.filter(pk=stale.pk).update(state=ReplicaState.FAILED)
    page = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name]), **HTMX)
    assert b"(reloading)" not in page.content and b"hx-trigger" not in page.content
    client.force_login(org["viewer"])
    replicas = client.get(f"/api/v1/deployments/{deployment.name}").json()["replica_set"]
    assert {r["id"]: r["loaded_adapters"] for r in replicas} == {current.pk: ["support-tone"], stale.pk: []}

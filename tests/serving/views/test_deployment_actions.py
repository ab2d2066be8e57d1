"""The buttons of a deployment's page (scale, stop, delete, rolling update, adapters) and its prompt box
(whose answers, through a real gateway, are tested in tests/gateway/test_playground.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from serving import reconcile, services
from serving.models import Deployment
from tests.serving.views.conftest import HTMX, add_replica, audited, make_version

pytestmark = pytest.mark.django_db


# --- Scale, stop, delete, rolling update, adapters -------------------------------------------------
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


# --- No room for a surge replica -------------------------------------------------------------------
def blocked_by_surge(deployment, node):
    """A rolling restart whose surge replica found no room (as the reconcile says it)."""
    add_replica(deployment, node, generation=deployment.generation)
    deployment.generation += 1
    deployment.status_detail = f"{reconcile.SURGE_BLOCKED}: needs 1 core(s); the most free is 0 core(s)."
    deployment.save(update_fields=["generation", "status_detail"])


def test_a_surge_with_no_room_offers_replace_in_place_to_those_who_run_the_deployment(
    signed_in, org, deployment, node
):
    blocked_by_surge(deployment, node)
    url = reverse("deployment-detail", args=[deployment.name])
    engineer_page = signed_in(org["engineer"]).get(url).content.decode()
    assert "Cannot place a surge replica" in engineer_page
    assert reverse("deployment-replace-in-place", args=[deployment.name]) in engineer_page
    viewer_page = signed_in(org["viewer"]).get(url).content.decode()
    assert "Cannot place a surge replica" in viewer_page
    assert reverse("deployment-replace-in-place", args=[deployment.name]) not in viewer_page


def test_an_engineer_replaces_in_place_and_it_is_audited(signed_in, org, deployment, node):
    blocked_by_surge(deployment, node)
    response = signed_in(org["engineer"]).post(
        reverse("deployment-replace-in-place", args=[deployment.name]), follow=True
    )
    assert "replicas in place" in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.in_place_generation == deployment.generation
    assert audited("deployment.replace_in_place", deployment) is not None


def test_a_viewer_gets_403_on_replace_in_place_and_an_outsider_404(signed_in, org, deployment, node):
    blocked_by_surge(deployment, node)
    url = reverse("deployment-replace-in-place", args=[deployment.name])
    assert signed_in(org["viewer"]).post(url).status_code == 403
    assert signed_in(org["outsider"]).post(url).status_code == 404
    deployment.refresh_from_db()
    assert deployment.in_place_generation is None


def test_an_owner_sets_the_update_strategy_and_it_is_shown(signed_in, org, deployment):
    client = signed_in(org["owner"])
    response = client.post(
        reverse("deployment-update-strategy", args=[deployment.name]),
        {"update_strategy": "replace"},
        follow=True,
    )
    assert "Replace in place: stop an old replica" in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.update_strategy == "replace"
    refused = client.post(
        reverse("deployment-update-strategy", args=[deployment.name]), {"update_strategy": "x"}, follow=True
    )
    assert "update_strategy: one of surge, replace." in refused.content.decode()

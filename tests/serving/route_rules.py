"""The permission decision of each serving page, for tests/test_route_permissions.py, with the objects those
pages act on (``build_world``) and where their URL arguments come from (``UI_KWARGS``).

The world values the rules use, named as that test's ``world`` names them: ``node``, ``deployment``,
``adapter`` (attached to the deployment; a name it does not serve answers a message, so any works),
``endpoint`` (shared with its own team's department: ``share``), ``team_id``, ``version_id``, and ``pool`` / ``adapter_version_id`` (where missing, the form
is refused as invalid, still after the permission decision)."""

from __future__ import annotations

from django.utils import timezone

from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving.choices import NodeState, PoolKind
from serving.models import (
    ComputePool,
    Deployment,
    DeploymentAdapter,
    Endpoint,
    EndpointRoute,
    EndpointShare,
    Node,
)
from tests.permissions import Rule, ui

# One route to the world's deployment, as the route editor's formset posts it.
ROUTE_ROWS = {
    "routes-TOTAL_FORMS": "1",
    "routes-INITIAL_FORMS": "0",
    "routes-0-deployment": "{deployment}",
    "routes-0-adapter": "",
    "routes-0-weight": "100",
}

UI_ROUTES: dict[str, Rule] = {
    "pool-list": ui("signed_in"),
    "pool-create": ui("org", "pool.manage", "POST", name="gpu-b", kind="gpu"),
    # The world's pool is open to every team, so every signed-in user sees its node: 403, not 404.
    "node-state": ui("org", "pool.manage", "POST", state="cordoned"),
    "deployment-list": ui("signed_in"),
    "deployment-create": ui(
        "team",
        "deployment.manage",
        "POST",
        name="new-bot",
        team="{team_id}",
        version="{version_id}",
        pool="{pool}",
        replicas="0",
    ),
    "deployment-detail": ui("team", "model.view"),
    "deployment-scale": ui("team", "deployment.manage", "POST", replicas="2"),
    "deployment-stop": ui("team", "deployment.manage", "POST"),
    "deployment-restart": ui("team", "deployment.manage", "POST"),
    "deployment-update": ui("team", "deployment.manage", "POST", version="{version_id}"),
    "deployment-delete": ui("team", "deployment.manage", "POST"),
    "deployment-update-strategy": ui("team", "deployment.manage", "POST", update_strategy="replace"),
    # No rolling change under way in the world: the allowed answer is a message saying so.
    "deployment-replace-in-place": ui("team", "deployment.manage", "POST"),
    "deployment-adapter-add": ui("team", "deployment.manage", "POST", adapter="{adapter_version_id}"),
    "deployment-adapter-remove": ui("team", "deployment.manage", "POST"),
    "deployment-try": ui(
        "team", "endpoint.call", "POST", model="{deployment}", prompt="Hello", max_tokens="16"
    ),
    "endpoint-list": ui("signed_in"),
    "endpoint-create": ui(
        "team", "deployment.manage", "POST", name="new-endpoint", team="{team_id}", **ROUTE_ROWS
    ),
    "endpoint-detail": ui("team", "model.view"),
    "endpoint-routes": ui("team", "deployment.manage", "POST", **ROUTE_ROWS),
    "endpoint-config": ui("team", "deployment.manage", "POST", kind="plain"),
    "endpoint-delete": ui("team", "deployment.manage", "POST"),
    "endpoint-share": ui("team", "endpoint.share", "POST", target="organisation"),
    "endpoint-unshare": ui("team", "endpoint.share", "POST"),
    # Rollouts, as for editing the routes: an incomplete form, or no rollout to abort, answers a message.
    "endpoint-rollout-start": ui("team", "deployment.manage", "POST", candidate="{deployment}"),
    "endpoint-rollout-abort": ui("team", "deployment.manage", "POST"),
}

# URL keyword argument -> the world value it takes, per route (routes not named here take none).
UI_KWARGS: dict[str, dict[str, str]] = {
    "node-state": {"name": "node"},
    **{
        route: {"name": "deployment"}
        for route in (
            "deployment-detail",
            "deployment-scale",
            "deployment-stop",
            "deployment-restart",
            "deployment-update",
            "deployment-delete",
            "deployment-update-strategy",
            "deployment-replace-in-place",
            "deployment-adapter-add",
            "deployment-try",
        )
    },
    "deployment-adapter-remove": {"name": "deployment", "adapter": "adapter"},
    **{
        route: {"name": "endpoint"}
        for route in (
            "endpoint-detail",
            "endpoint-routes",
            "endpoint-config",
            "endpoint-delete",
            "endpoint-share",
            "endpoint-rollout-start",
            "endpoint-rollout-abort",
        )
    },
    "endpoint-unshare": {"name": "endpoint", "share_id": "share"},
}


def ui_kwargs(route: str, values: dict) -> dict:
    return {kwarg: values[key] for kwarg, key in UI_KWARGS.get(route, {}).items()}


def build_world(*, actor, team, version: ModelVersion) -> dict:
    """What the serving routes act on, around ``version`` (a ready base version of ``team``): a pool open
    to every team with one ready node, a deployment of ``team`` serving ``version`` with one adapter
    attached and another ready to add, and an endpoint routing to the deployment, shared with the team's
    department (which leaves the organisation to share it with)."""
    pool = ComputePool.objects.create(name="local-cpu", kind=PoolKind.CPU)
    node = Node.objects.create(
        name="node-1",
        pool=pool,
        state=NodeState.READY,
        address="127.0.0.1",
        cpu_cores=8,
        memory_bytes=64 * 1024**3,
        heartbeat_at=timezone.now(),
    )
    adapter_model = registry.create_model(actor=actor, name="smol-tone", owner_team=team)
    adapters = [
        ModelVersion.objects.create(
            model=adapter_model,
            number=number,
            kind=VersionKind.ADAPTER,
            base_version=version,
            source=Source.FINE_TUNE,
            artifact=version.artifact,
            status=VersionStatus.READY,
            parameter_count=1_000_000,
            metrics={"adapter": {"r": 8}},
        )
        for number in (1, 2)
    ]
    deployment = Deployment.objects.create(
        name="smol",
        owner_team=team,
        version=version,
        pool=pool,
        replicas=1,
        engine_args={"enable_lora": True},
    )
    attached = DeploymentAdapter.objects.create(deployment=deployment, version=adapters[0], name="smol-tone")
    endpoint = Endpoint.objects.create(name="smol-ep", owner_team=team)
    EndpointRoute.objects.create(endpoint=endpoint, deployment=deployment, weight=100)
    share = EndpointShare.objects.create(endpoint=endpoint, department_id=team.department_id)
    return {
        "pool": pool.name,
        "node": node.name,
        "deployment": deployment.name,
        "adapter": attached.name,
        "adapter_version_id": adapters[1].pk,
        "endpoint": endpoint.name,
        "share": share.pk,
    }

"""Serving through its service functions, on real PostgreSQL: adapters on a deployment (hot-loaded or
rolled), endpoints and their audited routes."""

from __future__ import annotations

import pytest

from portfolio.errors import Invalid
from portfolio.registry import services as registry_services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import ModelVersion
from serving import services
from tests.serving.conftest import (
    audited,
    deploy,
    make_adapter,
    share_with_everyone,
)

pytestmark = pytest.mark.django_db


# --- Adapters --------------------------------------------------------------------------------------
def test_adding_a_version_that_is_not_an_adapter_of_the_base_is_refused(
    org, owner, team, deployment, artifact, base_version
):
    other_base = ModelVersion.objects.create(
        model=base_version.model, number=2, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
    )
    with pytest.raises(Invalid, match="is not an adapter of smollm2-135m:v1"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=other_base)
    adapter_of_other = make_adapter(org, team, artifact, other_base)
    with pytest.raises(Invalid, match="is not an adapter of smollm2-135m:v1"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_of_other)


def test_adding_an_adapter_without_lora_enabled_rolls_the_replicas_with_lora(
    org, owner, team, deployment, artifact, base_version
):
    adapter = make_adapter(org, team, artifact, base_version)
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    deployment.refresh_from_db()
    assert attached.name == "tone"
    assert deployment.generation == 2
    assert deployment.engine_args == {"enable_lora": True}
    event = audited("deployment.adapter_add", deployment)
    assert event.before["adapters"] == [] and event.after["adapters"] == ["tone"]


def test_adding_an_adapter_with_lora_enabled_hot_loads_it_without_a_restart(
    org, owner, team, base_version, pool, node, artifact
):
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    services.add_adapter(
        actor=owner, deployment=deployment, adapter=make_adapter(org, team, artifact, base_version)
    )
    deployment.refresh_from_db()
    assert deployment.generation == 1


def test_an_adapter_gets_a_valid_default_name_even_from_a_dotted_model_name(
    org, owner, team, deployment, artifact, base_version
):
    adapter = make_adapter(org, team, artifact, base_version, model_name="support.tone_v2")
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=adapter)
    assert attached.name == "support-bot-support-tone-v2-v1"


def test_an_adapter_named_like_its_deployment_is_refused(
    org, owner, team, deployment, artifact, base_version
):
    """vLLM refuses a LoRA module named like its served base: every new engine exited, the roll never ended."""
    adapter = make_adapter(org, team, artifact, base_version)
    with pytest.raises(Invalid, match="the deployment's own model name"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name=deployment.name)
    deployment.refresh_from_db()
    assert deployment.generation == 1 and not deployment.adapters.exists()


# --- Endpoints -------------------------------------------------------------------------------------
def test_changing_routes_is_audited_with_the_weights_before_and_after(
    owner, team, base_version, pool, node, deployment
):
    canary = deploy(owner, team, base_version, pool, name="support-bot-next")
    endpoint = services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": deployment.name}]
    )
    services.set_routes(
        actor=owner,
        endpoint=endpoint,
        routes=[
            {"deployment": deployment.name, "weight": 90},
            {"deployment": canary.name, "weight": 10},
        ],
    )
    event = audited("endpoint.routes", endpoint)
    assert [(r["deployment"], r["weight"]) for r in event.before["routes"]] == [("support-bot", 100)]
    assert [(r["deployment"], r["weight"]) for r in event.after["routes"]] == [
        ("support-bot", 90),
        ("support-bot-next", 10),
    ]


def test_an_endpoint_cannot_route_to_another_teams_deployment(
    admin, owner, team, other_team, base_version, pool, node, deployment
):
    share_with_everyone(base_version)  # the other team may serve it too
    theirs = deploy(admin, other_team, base_version, pool, name="contracts-bot")
    with pytest.raises(Invalid, match="no deployment 'contracts-bot' visible to you"):
        services.create_endpoint(actor=owner, name="support", team=team, routes=[{"deployment": theirs.name}])
    with pytest.raises(Invalid, match="routes to its own team's deployments only"):
        services.create_endpoint(actor=admin, name="support", team=team, routes=[{"deployment": theirs.name}])
    endpoint = services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": deployment.name}]
    )
    with pytest.raises(Invalid, match="own team's deployments only"):
        services.set_routes(actor=admin, endpoint=endpoint, routes=[{"deployment": theirs.name}])


def test_a_fallback_loop_is_refused(owner, team, deployment):
    routes = [{"deployment": deployment.name}]
    primary = services.create_endpoint(actor=owner, name="support", team=team, routes=routes)
    backup = services.create_endpoint(
        actor=owner, name="support-backup", team=team, routes=routes, fallback=primary
    )
    with pytest.raises(Invalid, match="fallback loop"):
        services.set_routes(actor=owner, endpoint=primary, routes=routes, fallback=backup)
    with pytest.raises(Invalid, match="fallback loop"):
        services.set_routes(actor=owner, endpoint=primary, routes=routes, fallback=primary)


def test_an_endpoint_routes_to_one_kind_of_model(owner, team, deployment, pool, base_version):
    speech = ModelVersion.objects.create(
        model=registry_services.create_model(
            actor=owner, name="whisper-tiny", owner_team=team, task="speech"
        ),
        number=1,
        kind=base_version.kind,
        source=Source.LOCAL,
        artifact=base_version.artifact,
        status=VersionStatus.READY,
        parameter_count=1_000_000,
    )
    whisper = deploy(owner, team, speech, pool, name="whisper")
    with pytest.raises(Invalid, match=r"one kind of model; got whisper \(speech\), support-bot \(text\)"):
        services.create_endpoint(
            actor=owner,
            name="mixed",
            team=team,
            routes=[{"deployment": deployment.name}, {"deployment": "whisper"}],
        )
    assert services.create_endpoint(
        actor=owner, name="speech", team=team, routes=[{"deployment": whisper.name}]
    )


def test_routes_need_a_weight_above_zero(owner, team, deployment):
    with pytest.raises(Invalid, match="at least one route needs a weight above 0"):
        services.create_endpoint(
            actor=owner, name="support", team=team, routes=[{"deployment": deployment.name, "weight": 0}]
        )

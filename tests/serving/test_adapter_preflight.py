"""Adding an adapter grows what a replica needs (the adapter's weights, and LoRA's slots when it turns LoRA on
and rolls every replica): it gets a restart's preflight, and one no node could hold is refused with nothing
written. Found by review: the first adapter turned LoRA on and rolled a deployment on a tight node
unchecked; with update_strategy=replace its old replica stopped and the new one fitted nowhere."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from serving import engine_args, reconcile, scheduler, services
from serving.choices import UpdateStrategy
from serving.models import Deployment, DeploymentAdapter, DeploymentEvent
from tests.serving.conftest import audited, deploy, make_adapter, mark_ready
from tests.serving.nodes import add_node

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024


def _ram_needed(version, pool, *, lora: bool, adapters: tuple[int, ...] = ()) -> int:
    """What the scheduler reserves for one replica of the version, LoRA on or off, with these adapters."""
    return scheduler.estimate(
        pool_kind=pool.kind,
        parameter_count=version.parameter_count,
        shape=version.shape,
        args=engine_args.validate({"enable_lora": lora}, pool.kind),
        adapters=adapters,
        facts=version.architecture_facts,
    ).ram_bytes


def _running_on_a_node_of(node_bytes: int, owner, team, version, pool, args=None) -> Deployment:
    """A deployment replacing in place, its one replica placed and ready on the pool's only node, of
    ``node_bytes``."""
    add_node(pool, "tight", memory_bytes=node_bytes)
    deployment = deploy(owner, team, version, pool, args=args)
    services.set_update_strategy(actor=owner, deployment=deployment, strategy=UpdateStrategy.REPLACE)
    reconcile.reconcile_deployment(deployment.pk)
    mark_ready(*deployment.replica_set.all())
    return Deployment.objects.get(pk=deployment.pk)


def test_the_first_adapter_is_refused_when_no_node_could_hold_a_replica_with_lora_on(
    org, owner, team, base_version, pool, artifact
):
    plain = _ram_needed(base_version, pool, lora=False)
    deployment = _running_on_a_node_of(plain + MIB, owner, team, base_version, pool)
    adapter = make_adapter(org, team, artifact, base_version)
    with pytest.raises(Conflict, match="Unschedulable on cpu-pool: ") as refused:
        services.add_adapter(actor=owner, deployment=deployment, adapter=adapter)
    assert refused.value.code == "unschedulable" and "LoRA slots" in refused.value.message
    after = Deployment.objects.get(pk=deployment.pk)
    assert (after.engine_args, after.generation) == (deployment.engine_args, deployment.generation)
    assert not DeploymentAdapter.objects.filter(deployment=deployment).exists()
    assert audited("deployment.adapter_add", deployment) is None
    assert not DeploymentEvent.objects.filter(
        deployment=deployment, kind__in=["rollout", "adapter_added"]
    ).exists()


def test_the_first_adapter_may_grow_into_the_room_its_own_replica_frees(
    org, owner, team, base_version, pool, artifact
):
    adapter = make_adapter(org, team, artifact, base_version)
    with_lora = _ram_needed(base_version, pool, lora=True, adapters=(adapter.parameter_count,))
    # Its plain replica leaves less than a LoRA one needs free, but a successor takes its room.
    deployment = _running_on_a_node_of(with_lora + MIB, owner, team, base_version, pool)
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter)
    after = Deployment.objects.get(pk=deployment.pk)
    assert after.engine_args["enable_lora"] and after.generation == deployment.generation + 1


def test_another_adapter_no_replica_could_hold_as_well_is_refused_and_the_first_stays(
    org, owner, team, base_version, pool, artifact
):
    first = make_adapter(org, team, artifact, base_version)
    room = _ram_needed(base_version, pool, lora=True, adapters=(first.parameter_count,)) + MIB
    deployment = _running_on_a_node_of(room, owner, team, base_version, pool, args={"enable_lora": True})
    services.add_adapter(actor=owner, deployment=deployment, adapter=first, name="tone")
    large = make_adapter(org, team, artifact, base_version, model_name="support-large")
    large.parameter_count = 64 * MIB  # its weights, 2 bytes each, are more than the node has spare
    large.save(update_fields=["parameter_count"])
    deployment = Deployment.objects.get(pk=deployment.pk)
    with pytest.raises(Conflict, match="Unschedulable on cpu-pool: "):
        services.add_adapter(actor=owner, deployment=deployment, adapter=large, name="large")
    assert [a.name for a in DeploymentAdapter.objects.filter(deployment=deployment)] == ["tone"]
    assert audited("deployment.adapter_add", deployment).after["adapters"] == ["tone"]
    assert Deployment.objects.get(pk=deployment.pk).generation == deployment.generation


def test_the_api_refuses_it_in_the_apis_error_shape(client, org, owner, team, base_version, pool, artifact):
    plain = _ram_needed(base_version, pool, lora=False)
    deployment = _running_on_a_node_of(plain + MIB, owner, team, base_version, pool)
    adapter = make_adapter(org, team, artifact, base_version)
    client.force_login(org["owner"])
    response = client.post(
        f"/api/v1/deployments/{deployment.name}/adapters",
        {"version_id": adapter.pk},
        content_type="application/json",
    )
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "unschedulable" and error["message"].startswith("Unschedulable on cpu-pool: ")
    assert error["request_id"]
    assert not DeploymentAdapter.objects.filter(deployment=deployment).exists()


def test_adapters_past_max_loras_add_nothing_a_replica_must_hold(
    org, owner, team, base_version, pool, artifact
):
    """The engine holds at most ``max_loras`` adapters in memory, and one more while it loads one before
    evicting another (vLLM's cache evicts the least recently used and reads it again from disk), so a node
    with room for LoRA and the largest two takes a third as large: counting every attached adapter's weights
    refused it as unschedulable."""
    large = 64 * MIB  # parameters: 128 MiB of weights at 2 bytes each
    args = {"enable_lora": True, "max_loras": 1}
    room = (
        scheduler.estimate(
            pool_kind=pool.kind,
            parameter_count=base_version.parameter_count,
            shape=base_version.shape,
            args=engine_args.validate(args, pool.kind),
            adapters=(large, large),
            facts=base_version.architecture_facts,
        ).ram_bytes
        + MIB
    )
    deployment = _running_on_a_node_of(room, owner, team, base_version, pool, args=args)
    for name in ("first", "second", "third"):
        adapter = make_adapter(org, team, artifact, base_version, model_name=f"support-{name}")
        adapter.parameter_count = large
        adapter.save(update_fields=["parameter_count"])
        deployment = Deployment.objects.get(pk=deployment.pk)
        services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name=name)
    attached = DeploymentAdapter.objects.filter(deployment=deployment).order_by("name")
    assert [a.name for a in attached] == ["first", "second", "third"]

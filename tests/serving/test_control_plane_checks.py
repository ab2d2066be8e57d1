"""Checks of the serving control plane that a change made through one service function was missing, where
another function already made them: one kind of model per endpoint (rollouts, version changes), adapters'
ranks on a restart, what an endpoint's deletion or a new kind leaves behind (fallbacks, a distillation),
what a rolling LoRA switch needs, finite engine arguments, and the reserved name "new"."""

from __future__ import annotations

import math

import pytest

from portfolio.errors import Conflict, Invalid
from portfolio.registry import services as registry_services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import ModelVersion
from serving import engine_args, services
from serving.choices import PoolKind
from serving.models import ComputePool, Deployment, Endpoint, EndpointRoute, Rollout
from tests.serving.conftest import audited, deploy, make_adapter
from training.choices import DatasetKind, JobStatus
from training.models import Dataset, DatasetVersion, FineTuneJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def embedder(owner, team, base_version, pool, node) -> Deployment:
    """A deployment of an embedding model of the team."""
    version = ModelVersion.objects.create(
        model=registry_services.create_model(actor=owner, name="minilm", owner_team=team, task="embedding"),
        number=1,
        kind=base_version.kind,
        source=Source.LOCAL,
        artifact=base_version.artifact,
        status=VersionStatus.READY,
        parameter_count=1_000_000,
    )
    return deploy(owner, team, version, pool, name="embedder")


def plain(owner, team, deployment, name: str = "support", **fields) -> Endpoint:
    return services.create_endpoint(
        actor=owner, name=name, team=team, routes=[{"deployment": deployment.name}], **fields
    )


# --- One kind of model per endpoint -------------------------------------------------------------------
def test_a_deployment_of_another_kind_of_model_cannot_be_an_endpoints_canary(
    owner, team, deployment, embedder
):
    endpoint = plain(owner, team, deployment)
    with pytest.raises(
        Invalid, match=r"support's deployments must all serve one kind of model; got embedder \(embedding\)"
    ):
        services.start_rollout(actor=owner, endpoint=endpoint, deployment=embedder.name)
    assert not Rollout.objects.exists()
    assert list(EndpointRoute.objects.values_list("deployment__name", "weight")) == [("support-bot", 100)]


def test_a_routed_deployment_cannot_change_to_a_version_of_another_kind_of_model(
    owner, team, base_version, pool, deployment, embedder
):
    routed = deploy(owner, team, base_version, pool, name="support-next")
    services.create_endpoint(
        actor=owner,
        name="support",
        team=team,
        routes=[{"deployment": deployment.name}, {"deployment": routed.name, "weight": 0}],
    )
    with pytest.raises(Invalid, match=r"version: support's deployments must all serve one kind of model"):
        services.restart(actor=owner, deployment=routed, version=embedder.version)
    routed.refresh_from_db()
    assert routed.version == base_version and routed.generation == 1
    # Not routed by an endpoint: free to change.
    services.restart(actor=owner, deployment=embedder, version=base_version)


# --- Adapters' ranks -----------------------------------------------------------------------------------
def test_a_restart_cannot_lower_max_lora_rank_below_an_adapters_rank(
    org, owner, team, base_version, pool, node, artifact
):
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True, "max_lora_rank": 32})
    adapter = make_adapter(org, team, artifact, base_version)
    ModelVersion.objects.filter(pk=adapter.pk).update(metrics={"adapter": {"r": 32}})
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    with pytest.raises(
        Invalid, match=r"max_lora_rank: 16 is below the rank of its adapter tone \(.*rank 32\)"
    ):
        services.restart(actor=owner, deployment=deployment, args={"enable_lora": True, "max_lora_rank": 16})
    deployment.refresh_from_db()
    assert deployment.engine_args["max_lora_rank"] == 32 and deployment.generation == 1
    services.restart(actor=owner, deployment=deployment, args={"enable_lora": True, "max_lora_rank": 64})


# --- Turning LoRA on rolls every replica ------------------------------------------------------------
def test_an_adapter_that_turns_lora_on_starts_no_replicas_on_a_pool_closed_to_the_team_or_past_a_hard_limit(
    org, admin, owner, team, other_team, base_version, pool, deployment, artifact
):
    from portfolio.billing import budgets

    adapter = make_adapter(org, team, artifact, base_version)
    budgets.set_budget(actor=admin, team=team, amount="0", hard_limit=True)
    with pytest.raises(Conflict, match="hard limit"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=adapter)
    budgets.set_budget(actor=admin, team=team, amount="100", hard_limit=False)
    services.update_pool(actor=admin, pool=pool, description="", teams=[other_team])
    with pytest.raises(Invalid, match="pool: cpu-pool is not open to Support AI"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=adapter)
    deployment.refresh_from_db()
    assert deployment.generation == 1 and not deployment.adapters.exists()
    assert audited("deployment.adapter_add", deployment) is None


# --- Fallbacks ---------------------------------------------------------------------------------------
def test_an_endpoint_others_fall_back_to_cannot_become_a_composite(owner, team, deployment):
    support = plain(owner, team, deployment)
    plain(owner, team, deployment, name="sampler")
    plain(owner, team, deployment, name="support-eu", fallback=support)
    with pytest.raises(
        Conflict, match="support-eu falls back to support, and a fallback is a plain endpoint"
    ):
        services.configure_endpoint(
            actor=owner, endpoint=support, kind="vote", config={"endpoint": "sampler"}
        )
    support.refresh_from_db()
    assert support.kind == "plain" and audited("endpoint.configure", support) is None


def test_an_endpoint_others_fall_back_to_cannot_be_deleted(owner, team, deployment):
    support = plain(owner, team, deployment)
    eu = plain(owner, team, deployment, name="support-eu", fallback=support)
    plain(owner, team, deployment, name="support-us", fallback=support)
    with pytest.raises(Conflict, match="support-eu, support-us fall back to support; change their fallback"):
        services.delete_endpoint(actor=owner, endpoint=support)
    eu.refresh_from_db()
    assert eu.fallback == support and audited("endpoint.delete", support) is None


# --- A distillation's teacher --------------------------------------------------------------------------
def distillation(team, base_version, pool, teacher: Endpoint, status: str) -> FineTuneJob:
    dataset = Dataset.objects.create(name="prompts", owner_team=team, kind=DatasetKind.CHAT)
    prompts = DatasetVersion.objects.create(
        dataset=dataset,
        number=1,
        shape=DatasetKind.CHAT,
        artifact=base_version.artifact,
        content_sha256="0" * 64,
        row_count=2,
        train_count=1,
        eval_count=1,
        eval_fraction=0.5,
        split_seed=1,
        size_bytes=10,
    )
    return FineTuneJob.objects.create(
        owner_team=team,
        base_version=base_version,
        dataset_version=prompts,
        target_model=base_version.model,
        pool=pool,
        teacher_endpoint=teacher,
        status=status,
    )


def test_a_teacher_is_deleted_only_once_its_distillation_has_finished_and_the_job_keeps_its_row(
    owner, team, base_version, pool, deployment
):
    teacher = plain(owner, team, deployment, name="big-teacher")
    job = distillation(team, base_version, pool, teacher, JobStatus.RUNNING)
    with pytest.raises(Conflict, match=rf"big-teacher is in use by fine-tune #{job.pk} of smollm2-135m:v1"):
        services.delete_endpoint(actor=owner, endpoint=teacher)
    assert Endpoint.objects.filter(pk=teacher.pk).exists() and audited("endpoint.delete", teacher) is None
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    services.delete_endpoint(actor=owner, endpoint=Endpoint.objects.get(pk=teacher.pk))
    job.refresh_from_db()
    assert job.teacher_endpoint is None and job.status == JobStatus.SUCCEEDED
    assert audited("endpoint.delete", teacher).before["name"] == "big-teacher"


# --- Engine arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_number_that_is_not_finite_is_refused_as_an_engine_argument(value):
    with pytest.raises(Invalid, match="engine_args.gpu_memory_utilization: expected a number"):
        engine_args.validate({"gpu_memory_utilization": value}, PoolKind.GPU)


# --- Reserved names ----------------------------------------------------------------------------------
def test_the_name_new_is_reserved_for_the_create_pages_whoever_calls(
    admin, owner, team, base_version, pool, node
):
    with pytest.raises(Invalid, match="name: 'new' is reserved"):
        services.create_pool(actor=admin, name="new", kind=PoolKind.CPU)
    with pytest.raises(Invalid, match="name: 'new' is reserved"):
        deploy(owner, team, base_version, pool, name="new")
    deployment = deploy(owner, team, base_version, pool)
    with pytest.raises(Invalid, match="name: 'new' is reserved"):
        plain(owner, team, deployment, name="new")
    assert not ComputePool.objects.filter(name="new").exists()
    assert not Deployment.objects.filter(name="new").exists() and not Endpoint.objects.exists()

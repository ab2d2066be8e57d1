"""CPU replicas pinned to the cores the scheduler gave them: no two share a core, a stopped one gives its
cores back, replicas placed before pinning keep working, and the engine the agent starts is bound to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import agent, capacity, engine_args, prefetch, processes, reconcile, services
from serving.choices import DesiredState, PoolKind, ReplicaState
from serving.models import Replica
from tests.serving.conftest import live
from tests.serving.nodes import GIB

pytestmark = pytest.mark.django_db


def test_two_replicas_on_a_two_core_node_get_one_core_each(owner, deployment, node):
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    assert sorted(tuple(r.cpu_ids) for r in live(deployment)) == [(0,), (1,)]
    assert {r.kv_cache_bytes for r in live(deployment)} == {1 * GIB}  # the deployment's default KV space


def test_a_node_whose_cores_are_all_pinned_takes_no_more_replicas(owner, deployment, node):
    services.scale(actor=owner, deployment=deployment, replicas=3)
    reconcile.reconcile_deployment(deployment.pk)
    assert live(deployment).count() == 2
    deployment.refresh_from_db()
    assert "0 core(s)" in deployment.status_detail


def test_a_stopped_replica_gives_its_cores_back(owner, deployment, node):
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    first = live(deployment).get(cpu_ids=[0])
    assert capacity.pool_capacity(node.pool)[0].free_core_ids == []
    Replica.objects.filter(pk=first.pk).update(desired=DesiredState.STOPPED, state=ReplicaState.STOPPING)
    assert capacity.pool_capacity(node.pool)[0].free_core_ids == []  # still stopping: still holds them
    Replica.objects.filter(pk=first.pk).update(state=ReplicaState.STOPPED)
    assert capacity.pool_capacity(node.pool)[0].free_core_ids == [0]
    reconcile.reconcile_deployment(deployment.pk)
    assert sorted(tuple(r.cpu_ids) for r in live(deployment)) == [(0,), (1,)]


def test_a_replica_placed_before_pinning_keeps_its_core_count_and_the_new_one_fits_beside_it(
    owner, deployment, node
):
    reconcile.reconcile_deployment(deployment.pk)
    Replica.objects.filter(deployment=deployment).update(cpu_ids=[], kv_cache_bytes=0)  # an adopted engine
    services.scale(actor=owner, deployment=deployment, replicas=3)
    reconcile.reconcile_deployment(deployment.pk)
    free = capacity.pool_capacity(node.pool)[0]
    assert live(deployment).count() == 2 and free.cores_free == 0
    assert [list(r.cpu_ids) for r in live(deployment)] == [[], [0]]


def test_the_node_page_data_says_which_replica_holds_which_cores(owner, deployment, node):
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    holds = capacity.core_holds([node])[node.pk]
    assert [(h.cores, h.deployment) for h in holds] == [("0", "support-bot"), ("1", "support-bot")]


# --- The engine the agent starts ------------------------------------------------------------------
def build_cpu(**given) -> engine_args.EngineLaunch:
    return engine_args.build(
        python="python",
        pool_kind=PoolKind.CPU,
        args=engine_args.validate({"kv_cache_space_gib": 1}, PoolKind.CPU),
        model_dir=Path("/models/smol"),
        served_name="smol",
        host="127.0.0.1",
        port=8000,
        adapters={},
        gpu_indices=[],
        api_key="k",
        **given,
    )


def test_a_pinned_engine_binds_its_threads_to_its_cores_and_allocates_the_reserved_kv_cache():
    env = build_cpu(cpu_ids=[3, 2, 4, 7], kv_cache_bytes=2 * GIB).env
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "2-4,7"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_an_engine_without_core_ids_binds_as_vllm_chooses_with_the_deployments_kv_space():
    env = build_cpu().env
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_the_agent_starts_a_replica_bound_to_the_cores_the_scheduler_gave_it(
    settings, tmp_path, monkeypatch, owner, deployment, node
):
    settings.DATA_DIR = tmp_path
    settings.ENGINE_PYTHON = {PoolKind.CPU: "python", PoolKind.GPU: "python"}
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    started: dict[int, dict] = {}

    def fake_start(argv, env, replica_id, log_path):
        started[replica_id] = env
        return 4242

    monkeypatch.setattr(prefetch, "local_copy", lambda version, **_: tmp_path)
    monkeypatch.setattr(processes, "start", fake_start)
    monkeypatch.setattr(processes, "free_port", lambda host: 8100)
    for replica in live(deployment).select_related("deployment__version__model", "deployment__pool"):
        agent._start(replica, node)
    binds = {replica_id: env["VLLM_CPU_OMP_THREADS_BIND"] for replica_id, env in started.items()}
    assert binds == {r.pk: ",".join(map(str, r.cpu_ids)) for r in live(deployment)}
    assert sorted(binds.values()) == ["0", "1"]
    assert {env["VLLM_CPU_KVCACHE_SPACE"] for env in started.values()} == {"1"}

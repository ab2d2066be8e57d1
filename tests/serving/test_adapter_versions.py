"""A replica records which version of each adapter its engine may hold, written before the load is asked. Found
by review: it recorded names only, once a load had answered. An adapter removed and added again under its name
with another version while the first one's load was under way was then seen as loaded: the old weights were
served, and billed as the new version, until the engine restarted. And a load whose answer came after the
client's timeout, of an adapter then removed, was never unloaded (its name never recorded).

The engine is a stand-in for vLLM's adapter routes (tests/serving/test_agent_adapter_reloads.py); each
version's files are in a folder of its own."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from portfolio.errors import Conflict
from serving import adapter_sync, services
from serving.gateway.routing import _read_snapshot
from serving.models import Replica
from tests.serving.conftest import deploy, make_adapter
from tests.serving.test_agent_adapter_reloads import Engine
from tests.serving.views.conftest import add_replica

ROUTE = ("support-bot", "tone")


@pytest.fixture
def world(org, owner, team, base_version, pool, node, artifact):
    """A ready replica of a deployment with LoRA on and the adapter ``tone`` attached; another version of
    another model, to attach under the same name."""
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    first = make_adapter(org, team, artifact, base_version, model_name="support-tone")
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=first, name="tone")
    second = make_adapter(org, team, artifact, base_version, model_name="support-tone-b")
    return add_replica(deployment, node), attached, second


def _copy_at(version) -> str:
    return f"/cache/{version.pk}"


def _sync(replica: Replica) -> Replica:
    replica.refresh_from_db()
    adapter_sync.sync(replica)
    replica.refresh_from_db()
    return replica


def _routed() -> list[int]:
    return [r.id for r in _read_snapshot().adapter_replicas.get(ROUTE, [])]


@pytest.mark.django_db
def test_a_version_replaced_under_its_name_while_its_load_was_under_way_is_reloaded_and_not_routed_meanwhile(
    owner, world, monkeypatch
):
    replica, attached, second = world
    engine = Engine()
    monkeypatch.setattr(adapter_sync, "engine_request", engine)

    def copied_while_replaced(version, **_):
        # Its files are being copied (the pass waits for them) when someone removes it and attaches another
        # version under the name; the agent goes on to load what it was copying.
        if version.pk == attached.version_id and replica.deployment.adapters.get().version_id != second.pk:
            services.remove_adapter(actor=owner, attached=attached)
            services.add_adapter(actor=owner, deployment=replica.deployment, adapter=second, name="tone")
        return _copy_at(version)

    monkeypatch.setattr(adapter_sync.prefetch, "local_copy", copied_while_replaced)
    after = _sync(replica)
    assert engine.has == {"tone": _copy_at(attached.version)}  # the old weights
    assert _routed() == [], "routed and billed as the new version"
    assert after.adapter_versions == {"tone": attached.version_id}
    after = _sync(replica)
    assert engine.has == {"tone": _copy_at(second)}
    assert engine.calls[-2:] == [("/v1/unload_lora_adapter", "tone"), ("/v1/load_lora_adapter", "tone")]
    assert (after.loaded_adapters, after.adapter_versions) == (["tone"], {"tone": second.pk})
    assert _routed() == [replica.pk]


@pytest.mark.django_db
def test_a_load_that_timed_out_is_unloaded_once_its_adapter_is_removed(owner, world, monkeypatch):
    replica, attached, _ = world
    engine = Engine(time_out=1)  # loaded, but answered after the client gave up
    monkeypatch.setattr(adapter_sync, "engine_request", engine)
    monkeypatch.setattr(adapter_sync.prefetch, "local_copy", lambda version, **_: _copy_at(version))
    assert _sync(replica).loaded_adapters == []
    services.remove_adapter(actor=owner, attached=attached)
    after = _sync(replica)
    assert engine.has == {}
    assert (after.loaded_adapters, after.adapter_versions) == ([], {})


@pytest.mark.django_db
def test_the_name_of_a_load_asked_but_not_answered_cannot_be_reused_until_it_is_unloaded(owner, world):
    replica, attached, second = world
    Replica.objects.filter(pk=replica.pk).update(adapter_versions={"tone": attached.version_id})
    services.remove_adapter(actor=owner, attached=attached)
    with pytest.raises(Conflict, match="have not unloaded it yet"):
        services.add_adapter(actor=owner, deployment=replica.deployment, adapter=second, name="tone")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("restores_latest_schema")
def test_the_migration_records_the_attached_version_of_each_adapter_a_replica_loaded(world, node):
    replica, attached, _ = world
    idle = add_replica(replica.deployment, node, port=8102)
    before, after = (
        [("serving", "0013_replica_drain_started_at")],
        [("serving", "0014_replica_adapter_versions")],
    )
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    Old = executor.loader.project_state(before).apps.get_model("serving", "Replica")
    # "gone": removed from the deployment, its unload still to come.
    Old.objects.filter(pk=replica.pk).update(loaded_adapters=["gone", "tone"])
    MigrationExecutor(connection).migrate(after)
    replica.refresh_from_db()
    idle.refresh_from_db()
    assert replica.adapter_versions == {"tone": attached.version_id}
    assert idle.adapter_versions == {}

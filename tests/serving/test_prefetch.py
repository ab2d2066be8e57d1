"""A model's files are copied to a node off its reconcile pass: a slow copy leaves its replica pending and
the pass goes on with the node's other replicas; a later pass starts the engine once the copy is done."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from portfolio.billing.models import ComputeInterval
from portfolio.registry import storage
from portfolio.registry.choices import Health
from portfolio.registry.models import Artifact
from portfolio.registry.stores import default_store
from serving import agent, prefetch, processes, reconcile
from serving.choices import ReplicaState
from serving.models import DeploymentEvent
from tests.conftest import actor_for
from tests.registry.conftest import ready_base
from tests.serving.conftest import SMOLLM2_SHAPE, deploy, live

REAL_LOCAL_COPY = prefetch.local_copy  # the ``engines`` fixture replaces it

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(settings, tmp_path):
    settings.ARTIFACT_ROOT, settings.ARTIFACT_CACHE = tmp_path / "store", tmp_path / "cache"
    default_store.cache_clear()
    yield default_store()
    default_store.cache_clear()


@pytest.fixture
def held_copy(monkeypatch):
    """Copies out of the store wait until the test lets them go (at most 20 s): a large model on a slow link."""
    go, copying = threading.Event(), []
    real = storage.copy_verified

    def slow(store, entry, out):
        copying.append(entry.path)
        go.wait(20)
        real(store, entry, out)

    monkeypatch.setattr(storage, "copy_verified", slow)
    monkeypatch.setattr(prefetch, "WAIT_SECONDS", 0.2)
    yield go, copying
    go.set()


def stored_version(store, tmp_path, org, team, name: str = "tuned-model"):
    """A ready base version whose one file is in the store and not yet on the node."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    manifest = storage.store_directory(store, folder)
    artifact = Artifact.objects.record(manifest, store.uri(manifest.artifact_id))
    return ready_base(actor_for(org["engineer"]), team, name, artifact, parameter_count=134_515_008,
                      shape=SMOLLM2_SHAPE, dtype="bfloat16")  # fmt: skip


def placed(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    (replica,) = live(deployment)
    return replica


def copied(version) -> Path:
    return Path(settings.ARTIFACT_CACHE) / version.artifact_id


def test_a_slow_copy_leaves_its_replica_pending_while_the_pass_tends_the_nodes_other_replicas(
    engines, store, held_copy, tmp_path, monkeypatch, org, owner, team, base_version, pool, node
):
    go, copying = held_copy
    # The engines' stand-in: a version already on the node; the copy of any other is real (and held).
    monkeypatch.setattr(prefetch, "local_copy", lambda version, wait=None: (
        tmp_path if version.pk == base_version.pk else REAL_LOCAL_COPY(version, wait=wait)))  # fmt: skip
    running = placed(deploy(owner, team, base_version, pool, name="running-bot"))
    agent.reconcile_node(node.name)
    running.refresh_from_db()
    assert running.state == ReplicaState.STARTING and running.pid
    version = stored_version(store, tmp_path, org, team)
    pending = placed(deploy(owner, team, version, pool, name="new-bot"))
    processes.stop(processes.find(running.pid, running.pk), grace=5)  # meanwhile the first engine dies

    agent.reconcile_node(node.name)

    assert copying == ["config.json"], "the copy started"
    assert not copied(version).exists(), "the pass did not wait for the copy"
    pending.refresh_from_db()
    assert (pending.state, pending.pid) == (ReplicaState.PENDING, None)
    assert "Copying the model's files" in pending.state_detail
    running.refresh_from_db()
    assert running.state == ReplicaState.BACKOFF, "the node's other replica was tended in the same pass"
    assert all(
        run.ended_at for run in ComputeInterval.objects.filter(key__startswith=f"replica:{running.pk}:")
    )

    agent.reconcile_node(node.name)  # still copying: not a second copy, nor a second event
    assert copying == ["config.json"]
    assert DeploymentEvent.objects.filter(replica=pending, kind="copying").count() == 1

    go.set()
    deadline = time.monotonic() + 20
    while not copied(version).exists():
        assert time.monotonic() < deadline, "the copy did not finish"
        time.sleep(0.05)
    agent.reconcile_node(node.name)
    pending.refresh_from_db()
    assert pending.state == ReplicaState.STARTING and pending.pid


def test_a_copy_that_found_the_files_damaged_raises_once_and_marks_the_artifact_corrupt(
    store, tmp_path, org, team
):
    version = stored_version(store, tmp_path, org, team)
    (blob,) = [
        p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.read_bytes().startswith(b'{"model')
    ]
    blob.write_text("tampered")
    with pytest.raises(storage.CorruptArtifact, match="config.json"):
        prefetch.local_copy(version, wait=20)
    version.artifact.refresh_from_db()
    assert version.artifact.health == Health.CORRUPT
    assert not copied(version).exists()
    with pytest.raises(storage.CorruptArtifact):  # the next call copies again (the store may be repaired)
        prefetch.local_copy(version, wait=20)


def test_a_copy_another_process_of_the_agent_is_making_is_waited_for_not_made_twice(
    store, held_copy, tmp_path, org, team
):
    """The agent's loop and its pool children each reconcile the node: each had its own record of copies
    under way, so a second process started a second full copy of the same model beside the first."""
    go, copying = held_copy
    version = stored_version(store, tmp_path, org, team)
    assert prefetch.local_copy(version, wait=0) is None
    deadline = time.monotonic() + 10
    while not copying:
        assert time.monotonic() < deadline, "the first copy did not start"
        time.sleep(0.05)
    prefetch._copies.clear()  # noqa: SLF001 - what another process of the agent knows of this one's copy
    assert prefetch.local_copy(version, wait=0.5) is None
    go.set()
    assert prefetch.local_copy(version, wait=20) == copied(version)
    time.sleep(0.5)  # the first copy's thread ends too
    assert copying == ["config.json"], "the file was copied once"

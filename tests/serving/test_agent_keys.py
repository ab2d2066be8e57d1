"""The node agent and its engines' keys, with real engine processes: a stand-in engine behind the real engine
guard (tests/serving/stand_in_engine.py), started, health-checked and restarted by the agent's own code.

The agent's health checks send the replica's key (the guard refuses every path without it). An engine that
refuses the key the agent derives now was started before PORTFOLIO_ENGINE_KEY_SECRET was rotated: the agent
restarts it with the current key, which is how a rotation reaches running engines.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from serving import agent, engine_args, processes
from serving.choices import ReplicaState
from serving.models import DeploymentEvent, Replica

pytestmark = pytest.mark.django_db


def reconcile_until(replica: Replica, state: str, timeout: float = 60) -> Replica:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.reconcile_node("keys-node")
        replica.refresh_from_db()
        if replica.state == state:
            return replica
        time.sleep(0.3)
    pytest.fail(f"replica is {replica.state} ({replica.state_detail}), not {state}, after {timeout}s")


def status_with(replica: Replica, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{replica.base_url}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_agent_checks_an_engines_health_with_its_key_and_finds_it_ready(engines, replica):
    ready = reconcile_until(replica, ReplicaState.READY)
    assert status_with(ready, agent.engine_key(ready.pk)) == 200
    assert status_with(ready, None) == 401 and status_with(ready, "another key") == 401
    started = DeploymentEvent.objects.get(replica=ready, kind="started").message
    assert (
        str(ready.port) not in started and str(ready.pid) not in started
    )  # the timeline is read by every member


def test_an_engine_that_refuses_the_current_key_is_restarted_with_it_and_not_counted_as_a_crash(
    engines, replica, settings
):
    old_pid = reconcile_until(replica, ReplicaState.READY).pid
    old_key = agent.engine_key(replica.pk)

    settings.ENGINE_KEY_SECRET = b"the secret after the rotation"  # the agent restarts with the new secret
    new_key = agent.engine_key(replica.pk)
    assert new_key != old_key
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STARTING and replica.pid != old_pid
    assert not processes.find(old_pid, replica.pk), "the engine holding the old key is stopped"
    assert DeploymentEvent.objects.filter(replica=replica, kind="rekeyed").count() == 1

    after = reconcile_until(replica, ReplicaState.READY)
    assert (after.restarts, after.state_detail) == (0, "")
    assert status_with(after, new_key) == 200 and status_with(after, old_key) == 401


def test_an_engine_that_refuses_the_key_it_was_just_restarted_with_counts_as_a_crash(
    engines, replica, monkeypatch
):
    # An engine that holds some other key whatever it is started with: restarting it again cannot help.
    monkeypatch.setattr(agent, "engine_key", lambda replica_id: "the key the agent asks with")
    real_build = engine_args.build

    def wrong_key(**kwargs) -> engine_args.EngineLaunch:
        launch = real_build(**kwargs)
        return engine_args.EngineLaunch(argv=launch.argv, env={**launch.env, "VLLM_API_KEY": "another key"})

    monkeypatch.setattr(engine_args, "build", wrong_key)
    agent.reconcile_node("keys-node")  # started
    deadline = time.monotonic() + 30
    while not DeploymentEvent.objects.filter(replica=replica, kind="rekeyed").exists():
        assert time.monotonic() < deadline, "the engine was never found refusing the key"
        agent.reconcile_node("keys-node")
        time.sleep(0.3)
    replica.refresh_from_db()
    assert replica.state_detail == agent.REKEYED and replica.restarts == 0
    crashed = reconcile_until(replica, ReplicaState.BACKOFF, timeout=30)
    assert crashed.restarts == 1 and crashed.state_detail == "Engine refuses the key it was started with"
    assert crashed.pid is None

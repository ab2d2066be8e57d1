"""An agent killed between starting an engine and recording its pid: the engine runs on, and the replica
names none. The next agent's reconcile started a second engine beside it, both for good (the orphan sweep
passes over a replica that is wanted). The unrecorded one is stopped before the replica is started."""

from __future__ import annotations

import sys
import time

import pytest
from django.conf import settings

from serving import agent, engine_args, processes
from serving.choices import ReplicaState
from tests.serving.conftest import STAND_IN
from tests.serving.test_agent_keys import reconcile_until

pytestmark = pytest.mark.django_db


def test_an_engine_started_but_never_recorded_is_stopped_and_the_replica_runs_one(engines, replica):
    port = processes.free_port("127.0.0.1")
    argv = [sys.executable, str(STAND_IN), "127.0.0.1", str(port)]
    env = {"VLLM_API_KEY": agent.engine_key(replica.pk), "PYTHONPATH": str(engine_args.GUARD_DIR)}
    unrecorded = processes.start(argv, env, replica.pk, agent._log_path(replica))
    assert (replica.state, replica.pid) == (ReplicaState.PENDING, None)
    deadline = time.monotonic() + 60
    while processes.probe(f"http://127.0.0.1:{port}", agent.engine_key(replica.pk)) != processes.HEALTHY:
        assert time.monotonic() < deadline, processes.log_tail(agent._log_path(replica))
        time.sleep(0.2)

    agent.reconcile_node("keys-node", agent_start=True)  # the agent, started again
    replica = reconcile_until(replica, ReplicaState.READY)

    running = [process.pid for rid, process in processes.all_engines(settings.DATA_DIR) if rid == replica.pk]
    assert running == [replica.pid], f"engines of the replica: {running}; it records {replica.pid}"
    assert processes.find(unrecorded, replica.pk) is None

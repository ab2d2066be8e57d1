"""A replica to stop is drained before its engine stops: out of the gateways' routing table at once, then
stopped once its engine says no request is running or waiting (or the drain time ran out); a busy one does
not hold up the agent's pass, and a drain an agent restart cut short goes on. The real engine under a long
streamed answer is `tests/e2e/test_serving.py`'s last step."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from serving import draining
from serving.choices import DesiredState
from serving.engine_keys import engine_key
from serving.gateway.routing import _read_snapshot
from serving.models import Replica
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="smol"}} {running}
vllm:num_requests_waiting{{engine="0",model_name="smol"}} {waiting}
vllm:num_requests_waiting_by_reason{{engine="0",model_name="smol",reason="capacity"}} 7.0
"""


class Engine:
    """A stand-in engine's /metrics, behind its replica's key, with as many requests in flight as set."""

    def __init__(self, replica_id: int, running: int = 0, waiting: int = 0):
        self.running, self.waiting = running, waiting
        key, engine = f"Bearer {engine_key(replica_id)}", self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics" or self.headers.get("Authorization") != key:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = METRICS.format(running=engine.running, waiting=engine.waiting).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.replica = Replica(
            pk=replica_id,
            host="127.0.0.1",
            port=self.server.server_address[1],
            drain_started_at=timezone.now(),
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gauges():
    made: list[Engine] = []
    yield lambda *args, **kwargs: made.append(Engine(*args, **kwargs)) or made[-1]
    for engine in made:
        engine.close()


def test_the_requests_in_flight_are_the_running_and_waiting_gauges(gauges):
    engine = gauges(41, running=2, waiting=1)
    assert draining.in_flight(engine.replica.base_url, engine_key(41)) == 3
    assert draining.in_flight(engine.replica.base_url, "another key") is None
    engine.running = engine.waiting = 0
    assert draining.in_flight(engine.replica.base_url, engine_key(41)) == 0


def test_replicas_drain_together_until_idle_or_out_of_time(gauges, settings):
    settings.REPLICA_DRAIN_SECONDS, settings.GATEWAY_REFRESH_SECONDS = 3, 0.1
    finishing, stuck = gauges(42, running=1), gauges(43, waiting=2)
    threading.Timer(1.0, lambda: setattr(finishing, "running", 0)).start()
    started = time.monotonic()
    outcome = draining.settle([finishing.replica, stuck.replica])
    took = time.monotonic() - started
    assert outcome[42].startswith("Drained in ") and outcome[43].startswith("Drain time (3 s) ran out")
    assert 2.5 <= took < 5, "one wait for both, not one after the other"


def test_a_pass_waits_a_slice_at_most_and_leaves_a_busy_replica_draining(gauges, settings, monkeypatch):
    settings.REPLICA_DRAIN_SECONDS, settings.GATEWAY_REFRESH_SECONDS = 60, 0.1
    monkeypatch.setattr(draining, "PASS_SLICE_SECONDS", 0.5)
    started = time.monotonic()
    assert draining.settle([gauges(46, running=1).replica]) == {}
    assert time.monotonic() - started < 3


def test_an_idle_replica_still_waits_for_the_gateways_to_refresh(gauges, settings):
    settings.REPLICA_DRAIN_SECONDS, settings.GATEWAY_REFRESH_SECONDS = 30, 0.5
    started = time.monotonic()
    assert draining.settle([gauges(44).replica])[44].startswith("Drained in ")
    assert 1.0 <= time.monotonic() - started < 3, "two refreshes of the gateways' tables, then at once"


def test_no_drain_time_stops_at_once(gauges, settings):
    settings.REPLICA_DRAIN_SECONDS = 0
    started = time.monotonic()
    assert draining.settle([gauges(45, running=3).replica]) == {45: ""}
    assert time.monotonic() - started < 0.5


@pytest.mark.django_db
def test_a_replica_to_stop_leaves_the_routing_table_before_its_engine_stops(world):
    replica = Replica.objects.get(deployment__name="support-bot")
    assert [r.id for r in _read_snapshot().replicas["support-bot"]] == [replica.pk]
    Replica.objects.filter(pk=replica.pk).update(desired=DesiredState.STOPPED)  # still ready: being drained
    table = _read_snapshot()
    assert "support-bot" not in table.replicas and table.draining == {replica.pk}


@pytest.mark.django_db
def test_the_agent_stops_a_serving_replicas_engine_only_once_it_has_drained(
    engines, replica, settings, monkeypatch
):
    from serving import agent, processes
    from serving.choices import ReplicaState
    from tests.serving.test_agent_keys import reconcile_until

    settings.GATEWAY_REFRESH_SECONDS = 0.1
    ready = reconcile_until(replica, ReplicaState.READY)
    seen = []

    def in_flight(base_url, key, timeout=2.0):
        current = Replica.objects.get(pk=replica.pk)
        seen.append((current.state, current.state_detail, processes.find(ready.pid, ready.pk) is not None))
        return 2 if len(seen) < 3 else 0

    monkeypatch.setattr(draining, "in_flight", in_flight)
    Replica.objects.filter(pk=replica.pk).update(desired=DesiredState.STOPPED)
    agent.reconcile_node("keys-node")
    assert len(seen) == 3
    assert all(state == ReplicaState.STOPPING and alive for state, _, alive in seen), seen
    assert seen[0][1].startswith("Draining")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STOPPED and processes.find(ready.pid, ready.pk) is None
    assert replica.deployment.events.filter(kind="stopped").get().message.startswith("Drained in ")


@pytest.mark.django_db
def test_a_busy_replica_does_not_hold_up_the_pass_and_a_cut_drain_goes_on(
    engines, replica, settings, monkeypatch
):
    """The drain held the agent's whole pass (the node's other replicas unattended) for up to the drain time;
    and a replica left stopping by an agent restarted mid-drain had its engine stopped at once."""
    from serving import agent, processes
    from serving.choices import ReplicaState
    from tests.serving.test_agent_keys import reconcile_until

    settings.GATEWAY_REFRESH_SECONDS = 0.1
    monkeypatch.setattr(draining, "PASS_SLICE_SECONDS", 0.5)
    ready = reconcile_until(replica, ReplicaState.READY)
    busy = [True]
    monkeypatch.setattr(draining, "in_flight", lambda base_url, key, timeout=2.0: 1 if busy[0] else 0)
    Replica.objects.filter(pk=replica.pk).update(desired=DesiredState.STOPPED)
    started = time.monotonic()
    agent.reconcile_node("keys-node")
    assert time.monotonic() - started < 3
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STOPPING and replica.drain_started_at is not None
    assert processes.find(ready.pid, ready.pk) is not None, "still serving what it holds"
    # The agent restarted mid-drain: the next drains on (its start kept), then stops the engine.
    Replica.objects.filter(pk=replica.pk).update(drain_started_at=None)
    busy[0] = False
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STOPPED and processes.find(ready.pid, ready.pk) is None
    assert replica.deployment.events.filter(kind="stopped").get().message.startswith("Drained in ")

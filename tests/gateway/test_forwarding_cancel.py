"""A call cancelled while its engine works on it (a vote's verifier questions are asked at once, and one
failing cancels the others) gives its place back in the replica's count of requests in flight: the balancer
sends each request to the replica with the fewest, and a count that only grows would pass a healthy replica
over for as long as the gateway process lives."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from serving.gateway import forwarding
from serving.gateway.events import Outcome
from serving.gateway.payloads import Shape
from serving.gateway.routing import Balancer, EndpointInfo, ReplicaInfo, Route, Snapshot


class Working:
    """An upstream whose engine has the request and has not answered yet."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def post(self, base_url, path, data, headers):
        self.asked.set()
        await asyncio.Event().wait()  # never answers: the caller is cancelled first


def test_a_call_cancelled_while_the_engine_works_gives_its_replica_slot_back():
    replica = ReplicaInfo(7, "http://127.0.0.1:1", b"Bearer x")
    endpoint = EndpointInfo(
        name="verifier",
        team_id=1,
        routes=(Route(weight=100, deployment="dep", upstream_model="dep", adapter="", version_id=1),),
        fallback=None,
        input_micros_per_token=0.0,
        output_micros_per_token=0.0,
        max_model_len=2048,
    )
    upstream = Working()
    gateway = SimpleNamespace(
        upstream=upstream,
        balancer=Balancer(),
        snapshot=Snapshot(endpoints={"verifier": endpoint}, replicas={"dep": [replica]}),
        table_version=1,
        renamers={},
    )
    outcome = Outcome(endpoint="verifier", kind="chat", shape=Shape(prompts=(8,), choices=1, per_choice=4),
                      event_id="e-1")  # fmt: skip

    async def call_then_cancel() -> None:
        body = {"messages": [{"role": "user", "content": "Is it Paris?"}], "max_tokens": 4}
        task = asyncio.create_task(
            forwarding.forward(gateway, None, None, "r-1", [endpoint], "verifier", body, outcome, 0.0)
        )
        await upstream.asked.wait()
        assert gateway.balancer.outstanding == {7: 1}
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(call_then_cancel())

    assert gateway.balancer.outstanding == {7: 0}

"""An adapter's route goes only to ready replicas that have loaded it: one whose load failed, whose files
are still copying, or of an older generation answers 404 for it. The routing table knows which from the
replicas' rows (read off the request path); with none that has it, the route is not chosen, so the call
goes to the endpoint's other routes, its fallback, or the 503 no ready replica gets."""

from __future__ import annotations

import pytest

from serving.gateway.routing import (
    EndpointInfo,
    ReplicaInfo,
    Route,
    Snapshot,
    _read_snapshot,
    choose_route,
    replicas_for,
)
from serving.models import Replica
from tests.serving.test_rollout_canary_health import tone as tone  # noqa: PLC0414 - the fixture, used by name
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name

BASE = Route(weight=50, deployment="bot", upstream_model="bot", adapter="", version_id=1)
TONE = Route(weight=50, deployment="bot", upstream_model="tone", adapter="tone", version_id=2)
OLD, NEW = ReplicaInfo(1, "http://old", b""), ReplicaInfo(2, "http://new", b"")


def endpoint(*routes: Route) -> EndpointInfo:
    return EndpointInfo(
        name="support",
        team_id=1,
        routes=routes,
        fallback=None,
        input_micros_per_token=0,
        output_micros_per_token=0,
        max_model_len=512,
    )


def test_an_adapter_route_goes_only_to_replicas_that_loaded_it():
    table = Snapshot(replicas={"bot": [OLD, NEW]}, adapter_replicas={("bot", "tone"): [NEW]})
    assert replicas_for(TONE, table) == [NEW]
    assert replicas_for(BASE, table) == [OLD, NEW]
    assert {choose_route(endpoint(BASE, TONE), table) for _ in range(200)} == {BASE, TONE}


def test_an_adapter_no_replica_loaded_is_not_chosen():
    table = Snapshot(replicas={"bot": [OLD, NEW]})
    assert {choose_route(endpoint(BASE, TONE), table) for _ in range(200)} == {BASE}
    assert choose_route(endpoint(TONE), table) is None, "no route: the fallback, else a 503"


@pytest.mark.django_db
def test_the_table_says_which_replicas_loaded_each_adapter(world, tone):
    replica = Replica.objects.get(deployment__name="support-bot")
    table = _read_snapshot()
    assert table.adapter_replicas == {}
    Replica.objects.filter(pk=replica.pk).update(
        loaded_adapters=["support-tone"], adapter_versions={"support-tone": tone.version_id}
    )
    table = _read_snapshot()
    assert [r.id for r in table.adapter_replicas[("support-bot", "support-tone")]] == [replica.pk]
    assert [r.id for r in table.replicas["support-bot"]] == [replica.pk]


def test_an_adapter_call_is_sent_to_the_replica_that_loaded_it():
    """The route was chosen by the replicas that loaded the adapter, but the call then went to any replica
    of the deployment: one without it answered 404."""
    import asyncio
    from types import SimpleNamespace

    from serving.gateway import forwarding
    from serving.gateway.events import Outcome
    from serving.gateway.payloads import Shape
    from serving.gateway.routing import Balancer

    asked = []

    class Upstream:
        async def post(self, base_url, path, data, headers):
            asked.append(base_url)
            raise ConnectionRefusedError  # what it answers does not matter here: where it was sent does

    tone_only = endpoint(
        Route(weight=100, deployment="bot", upstream_model="tone", adapter="tone", version_id=2)
    )
    gateway = SimpleNamespace(
        upstream=Upstream(),
        balancer=Balancer(),
        snapshot=Snapshot(
            endpoints={"support": tone_only},
            replicas={"bot": [OLD, NEW]},
            adapter_replicas={("bot", "tone"): [NEW]},
        ),  # fmt: skip
        table_version=1,
        renamers={},
    )
    for number in range(6):
        outcome = Outcome(endpoint="support", kind="chat", shape=Shape(prompts=(8,), choices=1, per_choice=4),
                          event_id=f"e-{number}")  # fmt: skip
        body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
        with pytest.raises(Exception):  # noqa: B017, PT011 - the refused connection, however it is reported
            asyncio.run(forwarding.forward(gateway, None, None, f"r-{number}", [tone_only], "support", body,
                                           outcome, 0.0))  # fmt: skip
    assert asked and set(asked) == {"http://new"}

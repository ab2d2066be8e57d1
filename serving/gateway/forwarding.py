"""One admitted request sent on to an engine: the endpoint's route (weighted or sticky), a replica (least
outstanding requests), the body with the engine's model name, and the answer relayed to the client whole
or as server-sent events (relay.py).

A replica that cannot be reached is passed over for another of the same route, then the chain's next
endpoint (its fallbacks); a pooled connection the engine had closed is tried once more on a fresh one.
Nothing is retried once the engine has the request and answers, even with an error: that answer is the
client's. Metered and priced by the endpoint that answered (``outcome.answered``); one that had the request
and sent no answer in time, at the worst case the request was admitted for (the engine's work is not known).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import orjson

from serving.gateway import errors, payloads, table_refresh
from serving.gateway.errors import GatewayError
from serving.gateway.events import Outcome
from serving.gateway.relay import MAX_ANSWER_BYTES, PATHS, Renamer, relay_stream, relay_whole
from serving.gateway.routing import (
    Balancer,
    EndpointInfo,
    ReplicaInfo,
    Snapshot,
    choose_route,
    replicas_for,
    sticky_key,
)
from serving.gateway.upstream import ConnectFailed, Dropped, ReadTimeout, TooLarge, Upstream

logger = logging.getLogger(__name__)

JSON = b"application/json"
TIMED_OUT = "The model did not answer in time."
DROPPED = "The model's connection closed before its answer was complete."


class Gateway(Protocol):
    """What forwarding uses of the gateway (app.py)."""

    upstream: Upstream | None
    balancer: Balancer
    snapshot: Snapshot
    table_version: int
    renamers: dict[tuple[str, str], Renamer]


SALTED = frozenset({"chat", "completion"})  # the kinds whose prompts fill the engine's prefix cache


async def forward(
    gateway: Gateway,
    receive,
    send,
    request_id: str,
    chain: list[EndpointInfo],
    public: str,
    payload: dict,
    outcome: Outcome,
    started: float,
    caller: tuple[str, dict[bytes, bytes]] = ("", {}),
    encode=None,  # upstream body -> (bytes, content type), when not JSON (audio.py's multipart form)
) -> None:
    """Answer the client from the first endpoint of ``chain`` with a replica that takes the request;
    ``public`` is the model name the client sees."""
    assert gateway.upstream is not None, "set by start()"
    snapshot = gateway.snapshot
    for current in chain:
        # Sticky A/B: the caller's key id or a header's value picks the route (routing.sticky_key).
        sticky = sticky_key(current, *caller) if current.sticky_by != "none" else b""
        route = choose_route(current, snapshot, chat=outcome.kind == "chat", sticky=sticky)
        if route is None:
            continue
        replicas = replicas_for(route, snapshot)  # an adapter's: those that have loaded it
        excluded: set[int] = set()
        retried: set[int] = set()
        while (replica := gateway.balancer.pick(replicas, excluded)) is not None:
            outcome.deployment, outcome.adapter, outcome.version_id = (
                route.deployment,
                route.adapter,
                route.version_id,
            )
            outcome.replica_id = replica.id
            upstream = dict(payload, model=route.upstream_model)
            if caller[0] and outcome.kind in SALTED:
                # An engine's prefix cache serves every caller: each key's prompts get a salt of their own
                # (vLLM's cache_salt), so that no caller can time its way to another's prompts; a client's
                # own salt stays within its key's.
                own = payload.get("cache_salt")
                upstream["cache_salt"] = f"{caller[0]}:{own}" if own else caller[0]
            if outcome.stream:
                # Always asked of the engine, to meter from its counts; passed on only as the client asked.
                upstream["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
            if encode:
                data, content_type = encode(upstream)
                content_type = content_type.encode()
            else:
                data, content_type = orjson.dumps(upstream), JSON
            headers = [
                (b"Authorization", replica.auth),
                (b"Content-Type", content_type),
                # The gateway's own id, unique: a client's X-Request-ID becomes vLLM's request id, so a
                # client choosing another's (or guessing the next) could collide with it on a shared engine.
                (b"X-Request-ID", outcome.event_id.encode()),
            ]
            gateway.balancer.acquire(replica)
            try:
                response = await gateway.upstream.post(replica.base_url, PATHS[outcome.kind], data, headers)
            except ConnectFailed as exc:
                # Nothing reached the engine: another replica may answer.
                gateway.balancer.release(replica)
                _passed_over(request_id, replica, exc)
                excluded.add(replica.id)
                continue
            except ReadTimeout:
                gateway.balancer.release(replica)
                if _still_served(gateway.snapshot, route.deployment, replica.id):
                    _billed_worst_case(outcome, current)
                raise _billed_if(outcome, GatewayError(504, TIMED_OUT, "upstream_timeout")) from None
            except OSError as exc:
                # Most often a pooled keep-alive connection that the engine had closed (restarted on the
                # same port, or idle too long): one more try on a fresh connection before the replica is
                # passed over. Inference has no side effects, so a retry is safe.
                gateway.balancer.release(replica)
                if replica.id in retried:
                    _passed_over(request_id, replica, exc)
                    excluded.add(replica.id)
                retried.add(replica.id)
                continue
            except asyncio.CancelledError:
                # Cancelled while the engine works on it (a verifier's questions are asked at once, and one
                # failing cancels the others): its place in the replica's count is given back, or the balancer
                # would pass a healthy replica over for as long as the process lives.
                gateway.balancer.release(replica)
                raise
            outcome.answered, outcome.endpoint = current, current.name
            try:
                rename = gateway.renamers.get((route.upstream_model, public))
                if rename is None:
                    rename = gateway.renamers[(route.upstream_model, public)] = Renamer(
                        route.upstream_model, public
                    )
                if outcome.stream and response.status == 200:
                    await relay_stream(receive, send, response, request_id, rename, outcome, started)
                else:
                    await relay_whole(send, response, request_id, rename, outcome)
            except TimeoutError:
                served = _still_served(gateway.snapshot, route.deployment, replica.id)
                if outcome.sent:
                    # A stream whose engine sent nothing of its answer is billed as the same call unstreamed.
                    if served and not (outcome.input_tokens or outcome.output_tokens):
                        _billed_worst_case(outcome, current)
                    await _end_stream(send, outcome, GatewayError(504, TIMED_OUT, "upstream_timeout"))
                    return
                if served:
                    _billed_worst_case(outcome, current)
                raise _billed_if(outcome, GatewayError(504, TIMED_OUT, "upstream_timeout")) from None
            except TooLarge:
                # Worked to the end of an answer larger than the gateway relays (log-probabilities of every
                # token of n long completions): the work was done, so it is billed.
                _billed_worst_case(outcome, current)
                too_large = GatewayError(
                    502,
                    f"The model's answer is larger than the gateway relays ({MAX_ANSWER_BYTES} bytes); ask "
                    "for fewer log-probabilities or tokens.",
                    "upstream_error",
                )
                raise _billed_if(outcome, too_large) from None
            except Dropped:
                # The engine went away mid-answer (restarted, out of memory): not a gateway fault. A stream
                # under way ends there with an error event, what it produced metered; else the client gets a 502.
                if outcome.sent:
                    await _end_stream(send, outcome, GatewayError(502, DROPPED, "upstream_error"))
                    return
                raise GatewayError(502, DROPPED, "upstream_error") from None
            finally:
                response.release()
                gateway.balancer.release(replica)
            return
    first = chain[0]
    logger.warning(
        "gateway: request %s: no replica of endpoint %s answered (tried %s; routes to %s; ready "
        "replicas per deployment in the %s: %s)",
        request_id,
        first.name,
        ", ".join(hop.name for hop in chain),
        ", ".join(r.deployment for r in first.routes),
        table_refresh.describe_table(snapshot, gateway.table_version, time.time()),
        {name: len(rs) for name, rs in snapshot.replicas.items()},
    )
    raise GatewayError(
        503,
        f"No replica of `{public}` is ready to serve (or all failed to connect).",
        "no_replica_available",
    )


def _still_served(snapshot, deployment: str, replica_id: int) -> bool:
    """Whether the replica a request timed out on is still in the routing table, or being drained (out of it,
    still working on what it was sent): one dropped meanwhile (its node lost, its engine gone) did not work on
    it, and the platform's outage is not billed."""
    if replica_id in snapshot.draining:
        return True
    return any(replica.id == replica_id for replica in snapshot.replicas.get(deployment, ()))


async def _end_stream(send, outcome: Outcome, error: GatewayError) -> None:
    """A stream cut short by its engine after the 200 went out: the client gets the error as its last event,
    in OpenAI's shape (as vLLM sends its own mid-stream errors), and the body ends; the usage event says it."""
    outcome.status, outcome.error = error.status, error.code
    event = errors.body(error.status, error.message, error.code)
    await send({"type": "http.response.body", "body": b"data: " + event + b"\n\ndata: [DONE]\n\n"})


def _billed_if(outcome: Outcome, error: GatewayError) -> GatewayError:
    """``error``, marked billed when the outcome was (its client told not to send the call again)."""
    error.billed = outcome.worst_case
    return error


def _billed_worst_case(outcome: Outcome, hop: EndpointInfo) -> None:
    """An engine that had the request and sent no answer in time may have worked to the end of it (one whose
    answer was too large to relay did): billed the worst case it was admitted for on ``hop`` (what it
    produced is not known), so that no one can have engine time for free by asking for more than the
    timeout or the relay allows. The usage event says upstream_timeout or upstream_error."""
    outcome.answered, outcome.endpoint, outcome.worst_case = hop, hop.name, True
    outcome.input_tokens, outcome.output_tokens = payloads.worst_usage(
        outcome.shape, hop.max_model_len, hop.input_micros_per_token, hop.output_micros_per_token
    )


def _passed_over(request_id: str, replica: ReplicaInfo, exc: Exception) -> None:
    # For operators (the client only learns that no replica answered): which replica failed, and how.
    logger.warning(
        "gateway: request %s: replica %s at %s failed before answering (%s: %s); passing it over",
        request_id,
        replica.id,
        replica.base_url,
        type(exc).__name__,
        exc,
    )

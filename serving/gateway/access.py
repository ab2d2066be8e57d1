"""Which endpoints a key or a playground ticket may call, read from the routing table in memory.

A key calls the endpoints of its own team, and those shared with its team, its department or the
organisation, within its scopes; a request follows an endpoint's fallbacks only while the key may call
them too. A playground ticket calls the one model it was issued for.
"""

from __future__ import annotations

import logging

import orjson

from serving.gateway import tickets
from serving.gateway.errors import no_such_model
from serving.gateway.keycache import KeyRecord
from serving.gateway.routing import EndpointInfo, Route, Snapshot

logger = logging.getLogger(__name__)


def may_call(key: KeyRecord, endpoint: EndpointInfo) -> bool:
    if key.scopes and endpoint.name not in key.scopes:
        return False
    return (
        endpoint.team_id == key.team_id
        or endpoint.shared_organisation
        or key.team_id in endpoint.shared_teams
        or key.department_id in endpoint.shared_departments
    )


def _owner(key: KeyRecord, endpoint: EndpointInfo) -> str:
    """``owned_by``: the owning team's slug, which for a shared endpoint is not the caller's."""
    return endpoint.owner or key.team


def models(snapshot: Snapshot, key: KeyRecord) -> bytes:
    """The body of ``GET /v1/models``: the endpoints the key may call."""
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": _owner(key, endpoint)}
        for name, endpoint in sorted(snapshot.endpoints.items())
        if may_call(key, endpoint)
    ]
    return orjson.dumps({"object": "list", "data": data})


def model(snapshot: Snapshot, key: KeyRecord, name: str) -> bytes:
    """The body of ``GET /v1/models/{name}``."""
    endpoint = snapshot.endpoints.get(name)
    if endpoint is None or not may_call(key, endpoint):
        raise no_such_model(name)
    return orjson.dumps({"id": name, "object": "model", "created": 0, "owned_by": _owner(key, endpoint)})


def endpoint(snapshot: Snapshot, key: KeyRecord, name) -> EndpointInfo:
    found = snapshot.endpoints.get(name) if isinstance(name, str) else None
    if found is None or not may_call(key, found):
        raise no_such_model(name)
    return found


def chain(
    snapshot: Snapshot,
    key: KeyRecord,
    first: EndpointInfo,
    choices: int,
    *,
    chat: bool,
    cut_fallbacks: set[tuple[str, str]],
) -> list[EndpointInfo]:
    """The endpoint and the fallbacks this request may go on to: each hop is checked as the first was
    (team, scopes), and must serve the same kind of model and allow as many completions; the chain
    stops at the first that does not (a fallback set in another team is never followed). A cut to another
    team's endpoint is logged once per process (``cut_fallbacks`` remembers which were)."""
    hops, current = [first], first
    while current.fallback:
        hop = snapshot.endpoints.get(current.fallback)
        if hop is None or any(hop.name == seen.name for seen in hops):
            break
        if chat and hop.no_chat:
            break
        if (
            not may_call(key, hop)
            or hop.embedding != first.embedding
            or hop.serves != first.serves
            or hop.max_n < choices
        ):
            if (current.name, hop.name) not in cut_fallbacks and hop.team_id != current.team_id:
                cut_fallbacks.add((current.name, hop.name))
                logger.warning(
                    "gateway: endpoint %s falls back to %s of another team; not followed",
                    current.name,
                    hop.name,
                )
            break
        hops.append(hop)
        current = hop
    return hops


def ticket_endpoint(snapshot: Snapshot, ticket: tickets.Ticket, name) -> EndpointInfo:
    """The one model a playground ticket may call, as an endpoint of its own."""
    deployment = snapshot.deployments.get(ticket.deployment)
    if (
        name != ticket.model
        or deployment is None
        or deployment.team_id != ticket.team_id
        or (name != ticket.deployment and name not in deployment.adapters)
    ):
        raise no_such_model(name)
    adapter = "" if name == ticket.deployment else name
    no_chat = deployment.without_chat.get(name, "")
    route = Route(
        weight=1,
        deployment=ticket.deployment,
        upstream_model=name,
        adapter=adapter,
        version_id=deployment.adapters[adapter] if adapter else deployment.version_id,
        chat=not no_chat,
    )
    return EndpointInfo(
        name=tickets.PLAYGROUND_ENDPOINT,
        team_id=ticket.team_id,
        routes=(route,),
        fallback=None,
        input_micros_per_token=0.0,
        output_micros_per_token=0.0,
        max_model_len=deployment.max_model_len,
        max_n=1,
        embedding=deployment.embedding,
        no_chat=no_chat,
        serves=deployment.serves,
        image_tokens=deployment.image_tokens,
        decoder_len=deployment.decoder_len,
    )

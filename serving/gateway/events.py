"""A request's outcome as the gateway records it: the usage event appended to a Redis stream.

The flusher (usage.py) moves the stream into PostgreSQL in batches. An admitted request leaves its event
in the process's in-flight ledger too (inflight.py) in case the process dies before it ends: the same id
(a composite's hops: its id with their suffix, hop_ids.py), so that the flusher stores the lost event or
the real ones, not both.
"""

from __future__ import annotations

import time

from serving.gateway import inflight, payloads
from serving.gateway.keycache import KeyRecord
from serving.gateway.routing import EndpointInfo

USAGE_STREAM = "portfolio:gw:usage"


class Outcome:
    """What happened to one request, filled in as it goes: where it went, how it ended, what it used."""

    __slots__ = (
        "endpoint",
        "kind",
        "stream",
        "deployment",
        "adapter",
        "version_id",
        "replica_id",
        "status",
        "error",
        "input_tokens",
        "output_tokens",
        "ttft",
        "sent",
        "event_id",
        "shape",
        "answered",
        "first",
        "via",
        "audio_ms",
        "worst_case",
    )

    def __init__(
        self,
        *,
        endpoint: str,
        kind: str,
        shape: payloads.Shape,
        event_id: str,
        first: EndpointInfo | None = None,
    ):
        self.endpoint, self.kind, self.shape, self.event_id = endpoint, kind, shape, event_id
        self.stream = shape.stream
        self.deployment = self.adapter = ""
        self.version_id: int | None = None
        self.replica_id: int | None = None
        self.status, self.error = 0, ""
        self.input_tokens = self.output_tokens = 0
        self.ttft: float | None = None
        self.sent = False
        self.answered: EndpointInfo | None = None
        self.first = first  # the endpoint called: metered by it until another one of the chain answers
        self.via = ""  # the composite endpoint (router, cascade, vote) this request is a hop of
        self.audio_ms = 0  # an upload's duration (audio.py), priced per second
        self.worst_case = False  # billed the worst case it was admitted for (an engine had it, sent nothing)

    def take_usage(self, usage) -> None:
        # Rerank and score answers count their pairs' tokens as prompt tokens too (vLLM's RerankUsage).
        if isinstance(usage, dict):
            self.input_tokens = int(usage.get("prompt_tokens") or 0)
            self.output_tokens = int(usage.get("completion_tokens") or 0)


def usage_event(key: KeyRecord, outcome: Outcome, latency: float, cost: int, *, lost: bool = False) -> dict:
    """The usage event of a request: as it ended, or (``lost``) as the in-flight ledger keeps it in case
    this process dies first: the same id (or, for a composite's hops, their request's: see the module's
    docstring), so that the flusher stores the lost event or the real ones, not both.

    Billing's ledger needs the endpoint's id and its owning team and department (``owner_*``) beside the
    caller's: a shared endpoint's calls are charged to the caller and credited to the owner."""
    info = outcome.answered or outcome.first
    owner_department = info.department_id if info else None
    if info and owner_department is None and info.team_id == key.team_id:
        owner_department = key.department_id  # a playground ticket's deployment: the caller's own team
    return {
        "id": outcome.event_id,
        "at": time.time(),
        "key": key.pk,
        "team": key.team_id,
        "department": key.department_id,
        "endpoint": outcome.endpoint,
        "via": outcome.via,
        "endpoint_id": info.id if info else None,
        "owner_team": info.team_id if info else None,
        "owner_department": owner_department,
        "deployment": outcome.deployment,
        "adapter": outcome.adapter,
        "version": outcome.version_id,
        "replica": outcome.replica_id,
        "kind": outcome.kind,
        "stream": int(outcome.stream),
        "in": outcome.input_tokens,
        "out": outcome.output_tokens,
        "audio_ms": outcome.audio_ms,
        "latency_ms": int(latency * 1000),
        "ttft_ms": None if outcome.ttft is None else int(outcome.ttft * 1000),
        "status": inflight.LOST_STATUS if lost else outcome.status,
        "error": inflight.LOST_ERROR if lost else outcome.error,
        "cost_micros": cost,
    }

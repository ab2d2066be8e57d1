"""Draining replicas before their engines stop, so that a scale-down, a rolling restart or a version change
cuts no request in flight.

A replica to stop (``desired`` stopped) leaves the gateways' routing table at their next refresh (routing.py
routes to running replicas only), but an engine stopped at once aborts what it is generating: vLLM's own
shutdown aborts by default. The node agent therefore drains a replica that was serving before it stops its
engine: it marks it stopping (``drain_started_at``), waits at least two refreshes of the gateways, so that none
sends it anything new, and then until the engine says it runs and holds no request (its Prometheus gauges), for
at most ``REPLICA_DRAIN_SECONDS`` from the start. A pass of the agent waits for its draining replicas together
and for ``PASS_SLICE_SECONDS`` at most, then tends the node's other replicas: one still busy is looked at again
by the next pass, and a drain that an agent restart cut short goes on from where it was.

The gateways' refresh interval is read from this process's settings (``PORTFOLIO_GATEWAY_REFRESH_MS``): the
agent and the gateways must be given the same (``make run`` and the compose file do).
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from django.conf import settings
from django.utils import timezone

from portfolio import direct_http
from serving.engine_keys import engine_key
from serving.models import Replica

IN_FLIGHT_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
MAX_METRICS_BYTES = 4 * 1024 * 1024  # an engine's /metrics is tens of kilobytes
POLL_SECONDS = 0.25
PASS_SLICE_SECONDS = 5.0  # the longest a pass of the agent waits for its draining replicas


def in_flight(base_url: str, key: str, timeout: float = 2.0) -> int | None:
    """The requests the engine is running or holding, summed over its gauges; None when it does not say
    (not answering, no such gauge): nothing goes through an engine that does not answer."""
    request = urllib.request.Request(  # noqa: S310 - the engine's own http address
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with direct_http.urlopen(request, timeout=timeout) as response:  # the engine key: no proxy
            text = response.read(MAX_METRICS_BYTES).decode("utf-8", errors="replace")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in IN_FLIGHT_GAUGES:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            seen = True
    return round(total) if seen else None


def settle(replicas: Iterable[Replica], still_mine: Callable[[], None] = lambda: None) -> dict[int, str]:
    """Of ``replicas`` (draining: ``drain_started_at`` set), those whose engines may stop now, each with how
    its drain ended (for its timeline), waiting up to ``PASS_SLICE_SECONDS`` for them; the others go on
    draining. ``still_mine`` raises when the node's lock was lost."""
    waiting = {replica.pk: replica for replica in replicas}
    limit = settings.REPLICA_DRAIN_SECONDS
    if limit <= 0:
        return dict.fromkeys(waiting, "")
    quiet = min(limit, 2 * settings.GATEWAY_REFRESH_SECONDS)
    slice_ends = time.monotonic() + PASS_SLICE_SECONDS
    done: dict[int, str] = {}
    while waiting:
        still_mine()
        now = timezone.now()
        for pk, replica in list(waiting.items()):
            since = replica.drain_started_at or now
            age = (now - since).total_seconds()
            if age >= limit:
                done[pk] = f"Drain time ({limit} s) ran out with requests in flight; stopped all the same."
            elif age >= quiet and not in_flight(replica.base_url, engine_key(pk)):
                done[pk] = f"Drained in {age:.1f} s: no request in flight."
            else:
                continue
            del waiting[pk]
        if not waiting or time.monotonic() >= slice_ends:
            break
        time.sleep(POLL_SECONDS)
    return done

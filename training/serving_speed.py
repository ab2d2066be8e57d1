"""How fast a version answers where it is served: latency (p50) and tokens per second on one of its
replicas, measured for an eval run.

An eval run scores what a version answers; choosing between versions also asks how fast it answers in
production. When the version is deployed (a ready replica serves it, as its deployment's base or as an
adapter the replica has loaded), some of the eval prompts are sent to that replica one at a time, the way
one client would see it. When it is not deployed the run says so and holds no figures: numbers measured
anywhere else (the trainer's own process, another version's replica) would not be the serving speed.

Only the job's own team's deployments are timed: the prompts are the team's held-out rows, sent straight to
the engine (no gateway, no metering), and the figures name the deployment, its node and replica. Another
team's replica of the same version is neither sent those rows nor named.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from django.utils import timezone

from portfolio import direct_http
from portfolio.accounts.models import Team
from portfolio.registry.models import ModelVersion
from serving import adapter_holding
from serving.engine_keys import engine_key
from serving.models import DeploymentAdapter, Replica
from training.evaluation import prompt_messages

SAMPLE_REQUESTS = 8
MAX_TOKENS = 16  # as the eval's own greedy answers
TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class ServingTarget:
    """A ready replica serving a version, and the model name it serves the version under."""

    replica: Replica
    model: str

    def describe(self) -> dict:
        return {
            "replica": self.replica.pk,
            "deployment": self.replica.deployment.name,
            "node": self.replica.node.name if self.replica.node else None,
            "model": self.model,
        }


def serving_target(version: ModelVersion, team: Team) -> ServingTarget | None:
    """A ready replica of ``team`` serving ``version`` (as its deployment's base, else as a loaded adapter),
    or None."""
    ready = (
        Replica.objects.filter(
            Replica.serving(),
            port__isnull=False,
            deployment__owner_team=team,
        )
        .exclude(host="")
        .select_related("deployment", "node")
        .order_by("id")
    )
    replica = ready.filter(deployment__version=version).first()
    if replica is not None:
        return ServingTarget(replica, replica.deployment.name)
    for adapter in DeploymentAdapter.objects.filter(version=version).order_by("id"):
        held = adapter_holding.holding(adapter.name, adapter.version_id)
        replica = ready.filter(held, deployment_id=adapter.deployment_id).first()
        if replica is not None:
            return ServingTarget(replica, adapter.name)
    return None


class ReplicaUnreachable(Exception):
    pass


def _complete(target: ServingTarget, messages: list[dict], max_tokens: int) -> tuple[float, int]:
    """One chat completion: (seconds, completion tokens as the engine counted them)."""
    body = {"model": target.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    request = urllib.request.Request(  # noqa: S310 - the replica's private address, from the database
        f"{target.replica.base_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {engine_key(target.replica.pk)}",
            "Content-Type": "application/json",
        },
    )
    started = time.perf_counter()
    try:
        with direct_http.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # key and rows: no proxy
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ReplicaUnreachable(str(exc)) from None
    elapsed = time.perf_counter() - started
    return elapsed, int((answer.get("usage") or {}).get("completion_tokens") or 0)


def measure(
    target: ServingTarget,
    rows: list[dict],
    *,
    requests: int = SAMPLE_REQUESTS,
    max_tokens: int = MAX_TOKENS,
) -> dict:
    """Send ``requests`` of the rows' prompts to the replica (again from the first when there are fewer
    rows: a median needs a few samples), one at a time, after one unmeasured request (it may load an
    adapter); the p50 latency and the tokens per second of those answers."""
    facts = target.describe()
    if not rows:
        return {"deployed": True, **facts, "error": "No eval rows to send."}
    prompts = [prompt_messages(rows[index % len(rows)]) for index in range(requests)]
    try:
        _complete(target, prompts[0], max_tokens)
        timings = [_complete(target, messages, max_tokens) for messages in prompts]
    except ReplicaUnreachable as exc:
        return {"deployed": True, **facts, "error": f"The replica did not answer: {exc}"[:500]}
    seconds = [elapsed for elapsed, _ in timings]
    tokens = sum(count for _, count in timings)
    return {
        "deployed": True,
        **facts,
        "requests": len(timings),
        "max_tokens": max_tokens,
        "completion_tokens": tokens,
        "latency_p50_ms": round(1000 * statistics.median(seconds), 1),
        "latency_max_ms": round(1000 * max(seconds), 1),
        # Tokens generated over the time spent waiting for them: one client's view, not the replica's peak.
        "tokens_per_second": round(tokens / sum(seconds), 1) if sum(seconds) > 0 else None,
        "measured_at": timezone.now().isoformat(),
    }


def serving_speed(version: ModelVersion, rows: list[dict], team: Team) -> dict:
    """The ``serving`` part of an eval run's metrics: measured on a replica of ``team`` (the job's), or why
    there is none."""
    target = serving_target(version, team)
    if target is None:
        return {
            "deployed": False,
            "note": f"{version.label} was not deployed by {team.name} (no ready replica) when evaluated.",
        }
    return measure(target, rows)

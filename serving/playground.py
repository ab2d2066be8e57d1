"""The deployment page's prompt box: one chat completion against a ready replica, server side.

Gated like an endpoint call (``endpoint.call`` in the deployment's team). Applications go through the
gateway instead; this is for people trying a deployment from the UI.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.errors import Conflict, Invalid
from serving.agent import engine_key
from serving.choices import ReplicaState
from serving.models import Deployment

MAX_PROMPT_CHARS = 8000


@dataclass(frozen=True)
class TryResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    replica_id: int
    model: str


def try_prompt(*, actor: Actor, deployment: Deployment, prompt: str, model: str = "", max_tokens: int = 128,
               temperature: float | None = None) -> TryResult:
    gate.require(actor, "endpoint.call", deployment)
    prompt = prompt.strip()
    if not prompt or len(prompt) > MAX_PROMPT_CHARS:
        raise Invalid(f"prompt: write 1-{MAX_PROMPT_CHARS} characters.")
    names = {deployment.name, *deployment.adapters.values_list("name", flat=True)}
    model = model or deployment.name
    if model not in names:
        raise Invalid(f"model: {deployment.name} serves {', '.join(sorted(names))}.")
    replica = deployment.replica_set.filter(state=ReplicaState.READY).order_by("?").first()
    if replica is None:
        raise Conflict("No replica is ready yet; watch the timeline below.")
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max(1, min(max_tokens, 512))}
    if temperature is not None:
        body["temperature"] = temperature
    request = urllib.request.Request(  # noqa: S310 - the replica's private address
        f"{replica.base_url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {engine_key(replica.pk)}", "Content-Type": "application/json"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Conflict(f"The replica did not answer: {exc}") from None
    usage = answer.get("usage") or {}
    return TryResult(
        text=answer["choices"][0]["message"].get("content") or "",
        prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
        latency_ms=int((time.monotonic() - started) * 1000), replica_id=replica.pk, model=model,
    )

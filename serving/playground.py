"""The deployment page's prompt box: one chat completion, through the gateway like every other call.

Gated like an endpoint call (``endpoint.call`` in the deployment's team). The call carries a playground
ticket (serving/gateway/tickets.py): signed here, valid for two minutes, good for this one model of this
deployment only, so a deployment with no endpoint can be tried and ordinary API keys still reach endpoints
only. The gateway meters it (a usage event of the deployment's team, endpoint ``(playground)``) and
limits it per user (``PORTFOLIO_PLAYGROUND_RPM`` / ``_TPM``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from django.conf import settings

from portfolio import direct_http
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.errors import Conflict, Invalid
from serving.choices import ReplicaState
from serving.gateway import tickets
from serving.models import Deployment

MAX_PROMPT_CHARS = 8000
MAX_TOKENS = 512
TIMEOUT = 120
# A replica just marked ready reaches the gateway's routing table within a refresh (a second by default).
ROUTING_GRACE = 5.0


@dataclass(frozen=True)
class TryResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    model: str
    request_id: str


def try_prompt(
    *,
    actor: Actor,
    deployment: Deployment,
    prompt: str,
    model: str = "",
    max_tokens: int = 128,
    temperature: float | None = None,
) -> TryResult:
    gate.require(actor, "endpoint.call", deployment)
    prompt = prompt.strip()
    if not prompt or len(prompt) > MAX_PROMPT_CHARS:
        raise Invalid(f"prompt: write 1-{MAX_PROMPT_CHARS} characters.")
    names = {deployment.name, *deployment.adapters.values_list("name", flat=True)}
    model = model or deployment.name
    if model not in names:
        raise Invalid(f"model: {deployment.name} serves {', '.join(sorted(names))}.")
    if not deployment.replica_set.filter(state=ReplicaState.READY).exists():
        raise Conflict("No replica is ready yet; watch the timeline below.")
    team = deployment.owner_team
    ticket = tickets.mint(
        deployment=deployment.name,
        model=model,
        team_id=team.pk,
        team=team.slug,
        department_id=team.department_id,
        user_id=actor.user.pk if actor.user else None,
    )
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max(1, min(max_tokens, MAX_TOKENS)),
    }
    if temperature is not None:
        body["temperature"] = temperature
    started = time.monotonic()
    try:
        with httpx.Client(
            base_url=settings.GATEWAY_INTERNAL_URL,
            timeout=TIMEOUT,
            headers={"Authorization": f"Bearer {ticket}"},
            **direct_http.httpx_options(),  # the ticket and prompt never go through a proxy
        ) as client:
            while True:
                response = client.post("/v1/chat/completions", json=body)
                if response.status_code != 503 or time.monotonic() - started > ROUTING_GRACE:
                    break
                time.sleep(0.5)
    except httpx.HTTPError as exc:
        raise Conflict(f"The gateway did not answer: {exc}") from None
    if response.status_code != 200:
        raise Conflict(_refusal(response))
    answer = response.json()
    usage = answer.get("usage") or {}
    return TryResult(
        text=answer["choices"][0]["message"].get("content") or "",
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        latency_ms=int((time.monotonic() - started) * 1000),
        model=model,
        request_id=response.headers.get("x-request-id", ""),
    )


def _refusal(response: httpx.Response) -> str:
    """The gateway's (OpenAI-shaped) error, as a sentence for the page."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    if response.status_code == 429:
        wait = response.headers.get("retry-after")
        return f"{message}{f' Try again in {wait} s.' if wait else ''}"
    return f"The gateway answered {response.status_code}: {message}"

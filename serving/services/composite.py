"""Composite endpoints: a router (a classifier endpoint picks a specialist), a cascade (a small endpoint
first, a large one when it is unsure) and test-time compute (n samples of one endpoint, one answer by vote).

Their ``config`` names plain endpoints of the same team only: no composite calls a composite, so there is no
cycle and a request makes a bounded number of hops (a router 2, a cascade 2, or 3 with a verifier, a vote 1
call of n samples, plus with a verifier one question per distinct answer: at most n).
Every number and list here is bounded; the gateway reads the validated config from its routing table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from portfolio.registry.choices import Task
from serving.choices import EndpointKind, RolloutState
from serving.gateway.voting import LABEL
from serving.models import Deployment, Endpoint
from serving.services import locks
from serving.services.endpoint_routes import resolve_routes, write_routes

ROUTER_MAX_LABELS = 32
ROUTER_MAX_LABEL_TOKENS = 16
ROUTER_MAX_SYSTEM = 4000  # characters of the classifier's system prompt
THRESHOLD_RANGE = (-20.0, 0.0)  # a mean token log-probability: 0 is certain, -20 hopeless
VOTE_MAX_N = 16
VERIFIER_MAX_PROMPT = 4000  # characters of a verifier's instructions
LARGE_TEMPLATE_MAX = (
    8000  # characters of a cascade's plain prompt for a large endpoint without a chat template
)
LARGE_STOP_MAX = (4, 16)  # stop strings, characters each
VERIFIER_KEYS = {"verifier", "verifier_prompt"}
KEYS: dict[str, set[str]] = {
    EndpointKind.ROUTER: {"classifier", "routes", "default", "system", "max_tokens"},
    EndpointKind.CASCADE: {
        "small",
        "large",
        "threshold",
        "confidence",
        "large_template",
        "large_stop",
        *VERIFIER_KEYS,
    },
    EndpointKind.VOTE: {"endpoint", "n", "method", "temperature", *VERIFIER_KEYS},
}
HOP_KEYS = ("classifier", "default", "small", "large", "endpoint", "verifier")
# The hop every call of a composite asks first, once: its calls are that hop's calls via it.
FIRST_HOP_KEY: dict[str, str] = {
    EndpointKind.ROUTER: "classifier",
    EndpointKind.CASCADE: "small",
    EndpointKind.VOTE: "endpoint",
}


def _invalid(field: str, message: str) -> Invalid:
    return Invalid(f"config.{field}: {message}", fields={"config": [f"{field}: {message}"]})


def _number(config: dict, field: str, default, low, high, *, whole: bool) -> Any:
    value = config.get(field, default)
    kinds = int if whole else (int, float)
    # An int is finite (math.isfinite raises OverflowError on one of 309 digits or more).
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or isinstance(value, float)
        and not math.isfinite(value)
    ):
        raise _invalid(field, f"a {'whole ' if whole else ''}number from {low} to {high}.")
    if not low <= value <= high:
        raise _invalid(field, f"from {low} to {high} (got {value}).")
    return value if whole else float(value)


def _hop(team: Team, field: str, name: object, own: str) -> Endpoint:
    """A plain endpoint of ``team`` serving text generation: what a composite may call."""
    if not isinstance(name, str) or not name:
        raise _invalid(field, "the name of an endpoint.")
    if name == own:
        raise _invalid(field, f"{own} cannot call itself.")
    endpoint = (
        Endpoint.objects.filter(name=name, owner_team=team)
        .prefetch_related("routes__deployment__version__model")
        .first()
    )
    if endpoint is None:
        raise _invalid(field, f"no endpoint {name!r} of team {team.name}; a composite calls its own team's.")
    if endpoint.kind != EndpointKind.PLAIN:
        raise _invalid(
            field,
            f"{name} is a {endpoint.kind} endpoint; a composite calls plain endpoints only (no cycles, bounded hops).",
        )
    served = no_text(r.deployment for r in endpoint.routes.all())
    if served:
        raise _invalid(field, f"{name} serves {served}; a composite needs text generation.")
    return endpoint


# What a deployment of these models answers instead of chat and completions.
NO_TEXT: dict[str, str] = {
    Task.EMBEDDING: "embeddings",
    Task.SPEECH: "speech to text",
    Task.RERANK: "reranking",
}


def no_text(deployments: Iterable[Deployment]) -> str:
    """What one of ``deployments`` serves that is not text generation ("" when all generate text)."""
    return next((NO_TEXT[d.version.model.task] for d in deployments if d.version.model.task in NO_TEXT), "")


def require_text_for_callers(endpoint: Endpoint, deployments: Iterable[Deployment]) -> None:
    """The composites calling ``endpoint`` ask it for chat completions: its routes must generate text."""
    served = no_text(deployments)
    callers = called_by(endpoint) if served else []
    if callers:
        message = (
            f"{', '.join(callers)} {'call' if len(callers) > 1 else 'calls'} {endpoint.name} for text "
            f"generation, and this route serves {served}; change {'them' if len(callers) > 1 else 'it'} first."
        )
        raise Invalid(f"routes: {message}", fields={"routes": [message]})


def check_config(team: Team, own: str, kind: str, config: object) -> dict:
    """The config as stored: known keys only, every name a plain endpoint of ``team``, every number in range."""
    if kind == EndpointKind.PLAIN:
        if config:
            raise _invalid("kind", "a plain endpoint has routes, not a config.")
        return {}
    if kind not in KEYS:
        raise Invalid(
            "kind: plain, router, cascade or vote.", fields={"kind": ["plain, router, cascade or vote."]}
        )
    if not isinstance(config, dict):
        raise _invalid("config", "an object.")
    unknown = sorted(set(config) - KEYS[kind])
    if unknown:
        raise _invalid(
            unknown[0], f"not a setting of a {kind} endpoint (known: {', '.join(sorted(KEYS[kind]))})."
        )
    if kind == EndpointKind.ROUTER:
        return _router(team, own, config)
    if kind == EndpointKind.CASCADE:
        return _cascade(team, own, config)
    sampler = _hop(team, "endpoint", config.get("endpoint"), own)
    n = _number(config, "n", 5, 2, VOTE_MAX_N, whole=True)
    if n > sampler.max_n:
        raise _invalid(
            "n", f"{sampler.name} allows at most {sampler.max_n} completions per request (its max_n)."
        )
    method = config.get("method", "majority")
    if method not in ("majority", "best_of_n", "verifier"):
        raise _invalid(
            "method", "majority, best_of_n (by log-probability) or verifier (best-of-n by a verifier)."
        )
    temperature = _number(config, "temperature", 0.8, 0, 2, whole=False)
    out = {"endpoint": sampler.name, "n": n, "method": method, "temperature": temperature}
    return out | _verifier(team, own, config, wanted=method == "verifier", why="method verifier")


def _cascade(team: Team, own: str, config: dict) -> dict:
    small = _hop(team, "small", config.get("small"), own).name
    large = _hop(team, "large", config.get("large"), own).name
    if small == large:
        raise _invalid("large", "another endpoint than small.")
    confidence = config.get("confidence", "logprob")
    if confidence not in ("logprob", "verifier"):
        raise _invalid("confidence", "logprob (mean token log-probability) or verifier (its yes or no).")
    out: dict = {"small": small, "large": large}
    if confidence == "verifier" and config.get("verifier") in (small, large):
        # Its questions must be told from the small answers and the escalations in the usage rows.
        raise _invalid(
            "verifier", "another endpoint than small and large (one on the same deployment will do)."
        )
    if confidence == "logprob":
        out["threshold"] = _number(config, "threshold", None, *THRESHOLD_RANGE, whole=False)
    elif "threshold" in config:
        raise _invalid("threshold", "a log-probability threshold; a verifier's yes or no needs none.")
    else:
        out["confidence"] = "verifier"
    return (
        out
        | _verifier(team, own, config, wanted=confidence == "verifier", why="confidence verifier")
        | _template(config)
    )


def _template(config: dict) -> dict:
    """A cascade's plain prompt for a large endpoint without a chat template (few-shot examples, say)."""
    template, stop = config.get("large_template", ""), config.get("large_stop", [])
    if not isinstance(template, str) or len(template) > LARGE_TEMPLATE_MAX:
        raise _invalid("large_template", f"text of at most {LARGE_TEMPLATE_MAX} characters.")
    if template and template.count("{input}") != 1:
        raise _invalid("large_template", "needs {input}, once, where the last user message goes.")
    count, chars = LARGE_STOP_MAX
    if (
        not isinstance(stop, list)
        or len(stop) > count
        or not all(isinstance(s, str) and 1 <= len(s) <= chars for s in stop)
    ):
        raise _invalid("large_stop", f"a list of at most {count} strings of 1 to {chars} characters.")
    if stop and not template:
        raise _invalid("large_stop", "only with large_template.")
    return ({"large_template": template} if template else {}) | ({"large_stop": stop} if stop else {})


def _verifier(team: Team, own: str, config: dict, *, wanted: bool, why: str) -> dict:
    """The verifier settings: a plain endpoint of the team (and its instructions) when ``wanted``, else none."""
    if not wanted:
        given = sorted(VERIFIER_KEYS & set(config))
        if given:
            raise _invalid(given[0], f"only with {why}.")
        return {}
    out = {"verifier": _hop(team, "verifier", config.get("verifier"), own).name}
    prompt = config.get("verifier_prompt", "")
    if not isinstance(prompt, str) or len(prompt) > VERIFIER_MAX_PROMPT:
        raise _invalid("verifier_prompt", f"text of at most {VERIFIER_MAX_PROMPT} characters.")
    if prompt:
        out["verifier_prompt"] = prompt
    return out


def _router(team: Team, own: str, config: dict) -> dict:
    classifier = _hop(team, "classifier", config.get("classifier"), own).name
    table = config.get("routes")
    if not isinstance(table, dict) or not 1 <= len(table) <= ROUTER_MAX_LABELS:
        raise _invalid("routes", f"an object of 1 to {ROUTER_MAX_LABELS} labels, each naming an endpoint.")
    routes = {}
    for raw, name in table.items():
        label = raw.strip().lower() if isinstance(raw, str) else ""
        if len(label) > 40 or not LABEL.fullmatch(label):
            raise _invalid(
                "routes", f"label {raw!r}: 1 to 40 of a-z, 0-9, _ and - (as the classifier's answer is read)."
            )
        if label in routes:
            raise _invalid("routes", f"label {label!r} given twice.")
        routes[label] = _hop(team, f"routes.{label}", name, own).name
    default = _hop(team, "default", config.get("default"), own).name
    system = config.get("system", "")
    if not isinstance(system, str) or len(system) > ROUTER_MAX_SYSTEM:
        raise _invalid("system", f"text of at most {ROUTER_MAX_SYSTEM} characters.")
    max_tokens = _number(config, "max_tokens", 4, 1, ROUTER_MAX_LABEL_TOKENS, whole=True)
    out = {"classifier": classifier, "routes": routes, "default": default, "max_tokens": max_tokens}
    if system:
        out["system"] = system
    return out


def hop_names(endpoint: Endpoint) -> list[str]:
    """The plain endpoints a composite endpoint calls, by name (none for a plain one)."""
    config = endpoint.config or {}
    hops = {config.get(k) for k in HOP_KEYS} | set((config.get("routes") or {}).values())
    return sorted(name for name in hops if isinstance(name, str) and name)


def first_hop(endpoint: Endpoint) -> str:
    """The endpoint a composite asks first on every call, by name ("" for a plain one)."""
    name = (endpoint.config or {}).get(FIRST_HOP_KEY.get(endpoint.kind, ""))
    return name if isinstance(name, str) else ""


def called_by(endpoint: Endpoint) -> list[str]:
    """The composite endpoints of its team that call ``endpoint``, by name."""
    composites = Endpoint.objects.filter(owner_team_id=endpoint.owner_team_id).exclude(
        kind=EndpointKind.PLAIN
    )
    return sorted(c.name for c in composites if endpoint.name in hop_names(c))


def require_max_n_for_votes(endpoint: Endpoint, max_n: int) -> None:
    """A vote asks its sampler for its ``n`` completions in one request: the sampler's cap may not fall
    below what a vote of its team asks."""
    votes = Endpoint.objects.filter(owner_team_id=endpoint.owner_team_id, kind=EndpointKind.VOTE)
    wanting = sorted(
        f"{v.name} (n={v.config.get('n')})"
        for v in votes
        if (v.config or {}).get("endpoint") == endpoint.name and int(v.config.get("n", 0)) > max_n
    )
    if wanting:
        message = (
            f"{', '.join(wanting)} {'ask' if len(wanting) > 1 else 'asks'} {endpoint.name} for more "
            f"completions per request; lower {'their' if len(wanting) > 1 else 'its'} n first."
        )
        raise Invalid(f"max_n: {message}", fields={"max_n": [message]})


def lock_calls_of(team_id: int) -> None:
    """Changes to who calls whom in a team (a composite configured or created, an endpoint deleted, routes or
    a fallback set) run one at a time: each checks the endpoints it names or is named by, and two at once
    could each pass against the other's uncommitted change (a router calling an endpoint made a vote
    meanwhile, or deleted; a fallback loop set from both ends). The team's row, locked without blocking the
    inserts that refer to it, is their mutex; taken before any endpoint's row."""
    list(Team.objects.select_for_update(no_key=True).filter(pk=team_id).values_list("pk", flat=True))


def require_not_called(endpoint: Endpoint, doing: str) -> None:
    callers = called_by(endpoint)
    if callers:
        raise Conflict(
            f"{endpoint.name} is called by {', '.join(callers)}; change {'them' if len(callers) > 1 else 'it'} "
            f"first, then {doing}."
        )


@transaction.atomic
def configure_endpoint(
    *,
    actor: Actor,
    endpoint: Endpoint,
    kind: str,
    config: dict | None = None,
    routes: list[dict] | None = None,
) -> Endpoint:
    """Make an endpoint a router, cascade or vote with ``config``, or a plain one again routing by weight: to
    ``routes`` when given (in place of any it kept), else to those it kept from before it was made composite.
    Audited once, with the kind, config and routes before and after."""
    gate.require(actor, "deployment.manage", endpoint)
    lock_calls_of(endpoint.owner_team_id)
    endpoint = locks.endpoint(endpoint.pk)
    checked = check_config(endpoint.owner_team, endpoint.name, kind, config or {})
    resolved = None
    if kind != EndpointKind.PLAIN:
        if routes:
            raise Invalid(
                f"routes: a {kind} endpoint calls the endpoints its config names; give routes only to make it "
                "plain.",
                fields={"routes": ["Leave empty for a composite endpoint."]},
            )
        require_not_called(endpoint, f"make it a {kind}")
        # A composite never calls its routes: the canary would go unwatched, and its end edit unused weights.
        canary = endpoint.rollouts.filter(state=RolloutState.CANARY).first()
        if canary is not None:
            raise Conflict(
                f"{endpoint.name} has a rollout under way (a canary of {canary.target}); let it finish or abort "
                f"it first, then make it a {kind}."
            )
        if endpoint.fallback_id:
            raise _invalid("kind", "a composite endpoint has no fallback; remove it first.")
        falling_back = sorted(Endpoint.objects.filter(fallback=endpoint).values_list("name", flat=True))
        if falling_back:
            raise Conflict(
                f"{', '.join(falling_back)} {'fall' if len(falling_back) > 1 else 'falls'} back to "
                f"{endpoint.name}, and a fallback is a plain endpoint; change "
                f"{'their' if len(falling_back) > 1 else 'its'} fallback first, then make it a {kind}."
            )
    elif routes is not None:
        resolved = resolve_routes(actor, endpoint.owner_team, routes)
        require_text_for_callers(endpoint, (deployment for deployment, _, _ in resolved))
    elif not endpoint.routes.exists():
        raise Invalid(
            "routes: a plain endpoint needs routes, and this one has none: give them with the kind.",
            fields={"routes": ["Give the routes it should have as a plain endpoint."]},
        )
    before = endpoint.snapshot()
    if resolved is not None:
        write_routes(endpoint, resolved)
    endpoint.kind, endpoint.config = kind, checked
    endpoint.save(update_fields=["kind", "config"])
    audit.record(actor, "endpoint.configure", endpoint, before=before, after=endpoint.snapshot())
    return endpoint

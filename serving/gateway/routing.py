"""The gateway's routing table: endpoints, their weighted routes, and the ready replicas behind them; and
the deployments themselves, which only playground tickets reach (see tickets.py).

Checked against PostgreSQL every second in the background (never per request) and rebuilt when anything it
is read from has changed (fingerprint.py): a route edit, or a rollout's canary, promotion or rollback,
reaches the gateway at its next refresh. A route is picked at random by weight, or, on an endpoint with
sticky A/B assignment, by weighted rendezvous hashing of the caller's key id or of a request header's value
(``sticky_route``), so that one client keeps one variant while other variants come and go. Replica choice
is least outstanding requests among healthy replicas, random among ties. An adapter's route is live
only while a ready replica has loaded it (``replicas_for``, from the replicas' rows as the table read them):
a replica without it answers 404 for it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

from serving.engine_keys import engine_key
from serving.gateway import fingerprint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaInfo:
    id: int
    base_url: str
    # the Authorization header's value for the engine, encoded once per routing refresh; a secret, so not in repr
    auth: bytes = field(repr=False)


@dataclass(frozen=True)
class Route:
    weight: int
    deployment: str
    upstream_model: str  # the deployment's own name, or the adapter's
    adapter: str
    version_id: int
    chat: bool = True  # the version has a chat template (the engine refuses chat calls to one without)


@dataclass(frozen=True)
class Composite:
    """A router, cascade or vote endpoint's configuration (Endpoint.config, validated by
    serving/services/composite.py): the plain endpoints it calls, by name, and how it decides."""

    kind: str  # router | cascade | vote
    # router: ask ``classifier`` (with ``system`` before the last user message, ``label_tokens`` at most)
    classifier: str = ""
    table: dict[str, str] = field(default_factory=dict, hash=False)  # normalised label -> specialist
    default: str = ""
    system: str = ""
    label_tokens: int = 4
    # cascade: ``small`` first; under ``threshold`` (mean token log-probability), or when ``confidence`` is
    # "verifier" and the verifier does not say yes, escalate to ``large``
    small: str = ""
    large: str = ""
    threshold: float = -1.0
    confidence: str = "logprob"  # logprob | verifier
    # a chat request escalated to a ``large`` without a chat template: asked as this plain prompt
    # (``{input}``: the last user message) through /v1/completions, cut at ``large_stop``
    large_template: str = ""
    large_stop: tuple[str, ...] = ()
    # vote: ``n`` samples of ``sampler``, one answer by ``method`` (majority | best_of_n | verifier)
    sampler: str = ""
    n: int = 5
    method: str = "majority"
    temperature: float = 0.8
    # a cascade's or vote's ``verifier``: asked (with ``verifier_prompt`` as instructions) whether an answer
    # is right, yes or no
    verifier: str = ""
    verifier_prompt: str = ""

    def hops(self) -> tuple[str, ...]:
        """Every endpoint it may call, each once, in the order it may call them."""
        names = (
            self.classifier,
            *self.table.values(),
            self.default,
            self.small,
            self.verifier,
            self.large,
            self.sampler,
        )
        return tuple(dict.fromkeys(name for name in names if name))


def composite_of(kind: str, config: dict) -> Composite:
    if kind == "router":
        return Composite(
            kind,
            classifier=config["classifier"],
            table=dict(config["routes"]),
            default=config["default"],
            system=config.get("system", ""),
            label_tokens=int(config.get("max_tokens", 4)),
        )
    verifier = {"verifier": config.get("verifier", ""), "verifier_prompt": config.get("verifier_prompt", "")}
    if kind == "cascade":
        return Composite(
            kind,
            small=config["small"],
            large=config["large"],
            threshold=float(config.get("threshold", -1.0)),
            confidence=config.get("confidence", "logprob"),
            large_template=config.get("large_template", ""),
            large_stop=tuple(config.get("large_stop", ())),
            **verifier,
        )
    return Composite(
        kind,
        sampler=config["endpoint"],
        n=int(config["n"]),
        method=config.get("method", "majority"),
        temperature=float(config.get("temperature", 0.8)),
        **verifier,
    )


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    team_id: int
    routes: tuple[Route, ...]
    fallback: str | None
    input_micros_per_token: float
    output_micros_per_token: float
    max_model_len: int
    max_n: int = 8  # completions per prompt a request may ask for (Endpoint.max_n)
    embedding: bool = False  # served by pooling engines: /v1/embeddings only
    no_chat: str = ""  # "model vN" of a version without a chat template, when no route can take chat calls
    # Sharing (EndpointShare): who besides the owning team may call it, and the owner named in /v1/models.
    shared_teams: frozenset[int] = frozenset()
    shared_departments: frozenset[int] = frozenset()
    shared_organisation: bool = False
    owner: str = ""  # the owning team's slug
    # For billing's ledger (usage events carry them): the endpoint's row, and its owning team's department.
    id: int | None = None
    department_id: int | None = None
    # Sticky A/B (Endpoint.sticky_by): "none", "api_key" or "header" (by the header named, lower case).
    sticky_by: str = "none"
    sticky_header: bytes = b""
    composite: Composite | None = None  # a router, cascade or vote endpoint (no routes of its own)
    # Which routes its models answer (SERVES): text (chat, completions), embedding, speech (audio), score.
    serves: str = "text"
    audio_micros_per_second: float = 0.0  # the price book's audio_second, for speech models
    # The most prompt tokens one image costs on the costliest model it may reach (its routes, fallbacks and a
    # composite's hops; images.tokens_per_image); 0: not known, PORTFOLIO_GATEWAY_IMAGE_TOKENS.
    image_tokens: int = 0
    # A speech model's decoder tokens per 30 s chunk: min(max_model_len, the config's max_target_positions)
    # over its routes; 0: max_model_len (audio.py).
    decoder_len: int = 0


@dataclass(frozen=True)
class DeploymentInfo:
    team_id: int
    version_id: int
    adapters: dict[str, int]  # adapter name -> its version
    max_model_len: int
    embedding: bool
    without_chat: dict[str, str] = field(default_factory=dict)  # served name -> "model vN" lacking a template
    serves: str = "text"
    image_tokens: int = 0  # the most prompt tokens one image costs on its base version (images.py)
    decoder_len: int = 0  # a speech model's decoder limit per chunk (max_model_len, or less)


# What a model of each registry task answers (a task not named: text, i.e. chat and completions).
SERVES = {"embedding": "embedding", "speech": "speech", "rerank": "score"}


@dataclass
class Snapshot:
    endpoints: dict[str, EndpointInfo] = field(default_factory=dict)
    replicas: dict[str, list[ReplicaInfo]] = field(default_factory=dict)  # by deployment name
    # The ready replicas that have loaded an adapter, by (deployment name, adapter name)
    adapter_replicas: dict[tuple[str, str], list[ReplicaInfo]] = field(default_factory=dict)
    deployments: dict[str, DeploymentInfo] = field(default_factory=dict)  # by name
    # Replicas being drained (draining.py): routed to no more, still finishing what they were sent.
    draining: frozenset[int] = frozenset()
    built_at: float = 0.0  # time.time() when it was read, or last found unchanged
    fingerprint: str = ""  # of what it was read from (fingerprint.py)
    # Hard-limited budgets: ("team"|"department", id) -> (limit, token spend seed), micro-units (budgets.py)
    caps: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    caps_month: str | None = None  # "YYYYMM" in UTC: the month the caps' seeds are of


def build_snapshot(unless: str = "") -> Snapshot | None:
    """Synchronous: read the routing state (runs in a worker thread), or None when its fingerprint is still
    ``unless`` (nothing it is read from has changed).

    The table and its fingerprint are read in one read-only REPEATABLE READ transaction, so the fingerprint
    is exactly that of the state read: one read a moment before the table would let a change committed in
    between into the table but not into the fingerprint, and undoing that change later (a share added, then
    removed) would bring back the old fingerprint with a table that still shows it. The transaction lasts
    the few milliseconds of the read (its share locks wait only for a migration's ALTER TABLE)."""
    from django.db import close_old_connections, connection, transaction

    close_old_connections()
    try:
        if unless and fingerprint.read() == unless:
            return None
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            seen = fingerprint.read()
            snapshot = _read_snapshot()
        snapshot.fingerprint = seen
        return snapshot
    finally:
        close_old_connections()


def _read_snapshot() -> Snapshot:
    from django.conf import settings

    from portfolio.billing.budgets import hard_limits
    from portfolio.billing.pricing import current_audio_rates, current_token_rates
    from portfolio.registry.choices import Task
    from serving import adapter_holding
    from serving.choices import DesiredState, ReplicaState
    from serving.models import Deployment, Endpoint, Replica

    snapshot = Snapshot(built_at=time.time())
    prices = current_token_rates()  # endpoint id -> per million input and output tokens, in force now
    audio_prices = current_audio_rates()  # endpoint id -> per second of audio, in force now
    without_chat: dict[int, str] = {}  # version id -> "model vN", for versions without a chat template
    for deployment in Deployment.objects.select_related("version__model").prefetch_related(
        "adapters__version__model"
    ):
        served = [
            (deployment.name, deployment.version),
            *((a.name, a.version) for a in deployment.adapters.all()),
        ]
        for _, version in served:
            if not version.has_chat_template:
                without_chat[version.pk] = f"{version.model.name} v{version.number}"
        snapshot.deployments[deployment.name] = DeploymentInfo(
            team_id=deployment.owner_team_id,
            version_id=deployment.version_id,
            adapters={adapter.name: adapter.version_id for adapter in deployment.adapters.all()},
            max_model_len=int(deployment.engine_args.get("max_model_len", 2048)),
            embedding=deployment.version.model.task == Task.EMBEDDING,
            without_chat={name: without_chat[v.pk] for name, v in served if v.pk in without_chat},
            serves=SERVES.get(deployment.version.model.task, "text"),
            **_model_limits(deployment, settings.GATEWAY_IMAGE_TOKENS),
        )
    endpoints = Endpoint.objects.select_related("fallback", "owner_team").prefetch_related(
        "routes__deployment", "routes__adapter", "shares"
    )
    for endpoint in endpoints:
        composite = None
        if endpoint.kind != "plain":
            try:
                composite = composite_of(endpoint.kind, endpoint.config)
            except (KeyError, TypeError, ValueError):  # validated when written: a row edited by hand
                logger.error(
                    "gateway: endpoint %s has an unreadable %s config; skipped", endpoint.name, endpoint.kind
                )
                continue
        routes = []
        max_len = image_tokens = decoder_len = 0
        embedding = False
        serves = ""
        # A composite calls its hops, never the routes it kept to go back to plain: what it serves, its
        # context and its image bound are its hops' (composite.py, _reach_image_tokens), not theirs.
        for route in endpoint.routes.all() if composite is None else ():
            deployment = route.deployment
            max_len = max(max_len, int(deployment.engine_args.get("max_model_len", 2048)))
            known = snapshot.deployments.get(deployment.name)
            embedding = embedding or bool(known and known.embedding)
            serves = serves or (known.serves if known else "")
            # An adapter is served on its deployment's base: the base's vision tower and decoder.
            fixed = settings.GATEWAY_IMAGE_TOKENS or max_len
            image_tokens = max(image_tokens, known.image_tokens if known else fixed)
            decoder_len = max(decoder_len, known.decoder_len if known else max_len)
            version_id = route.adapter.version_id if route.adapter else deployment.version_id
            routes.append(
                Route(
                    weight=route.weight,
                    deployment=deployment.name,
                    upstream_model=route.adapter.name if route.adapter else deployment.name,
                    adapter=route.adapter.name if route.adapter else "",
                    version_id=version_id,
                    chat=version_id not in without_chat,
                )
            )
        price_in, price_out = prices.get(endpoint.pk, (0, 0))
        snapshot.endpoints[endpoint.name] = EndpointInfo(
            name=endpoint.name,
            team_id=endpoint.owner_team_id,
            routes=tuple(routes),
            fallback=endpoint.fallback.name if endpoint.fallback else None,
            input_micros_per_token=float(price_in),
            output_micros_per_token=float(price_out),
            max_model_len=max_len or 2048,
            max_n=endpoint.max_n if composite is None else 1,  # a composite returns one answer
            embedding=embedding,
            no_chat="" if any(r.chat for r in routes) or not routes else without_chat[routes[0].version_id],
            **_sharing(endpoint),
            id=endpoint.pk,
            department_id=endpoint.owner_team.department_id,
            sticky_by=endpoint.sticky_by,
            sticky_header=endpoint.sticky_header.encode("ascii"),
            composite=composite,
            serves=serves or "text",
            audio_micros_per_second=float(audio_prices.get(endpoint.pk, 0)) * 1_000_000,
            image_tokens=image_tokens,
            decoder_len=decoder_len,
        )
    _reach_image_tokens(snapshot.endpoints)
    # A replica to stop is sent nothing new: its node agent drains it (draining.py) before the engine stops.
    ready = Replica.objects.filter(Replica.serving())
    leaving = Replica.objects.filter(
        desired=DesiredState.STOPPED, state__in=[ReplicaState.READY, ReplicaState.STOPPING]
    )
    snapshot.draining = frozenset(leaving.values_list("pk", flat=True))
    for replica in ready.select_related("deployment"):
        info = ReplicaInfo(replica.pk, replica.base_url, f"Bearer {engine_key(replica.pk)}".encode())
        snapshot.replicas.setdefault(replica.deployment.name, []).append(info)
        known = snapshot.deployments.get(replica.deployment.name)
        attached = known.adapters if known else {}
        for adapter in adapter_holding.served(replica, attached):  # at the version attached now
            snapshot.adapter_replicas.setdefault((replica.deployment.name, adapter), []).append(info)
    now = datetime.now(UTC)
    snapshot.caps = hard_limits(now)  # one query: the spend is stored by billing.check_budgets
    snapshot.caps_month = now.strftime("%Y%m")
    return snapshot


def _model_limits(deployment, fixed_image_tokens: int) -> dict:
    """A deployment's per-model bounds for admission, from its base version's architecture facts (what the
    registry read from the config: families.py): an image's tokens (where the model's own figure is not
    the whole image, ``fixed_image_tokens`` when configured, else the context), and a speech decoder's limit."""
    from serving.gateway.images import tokens_per_image

    version = deployment.version
    facts = version.architecture_facts if isinstance(version.architecture_facts, dict) else {}
    max_len = int(deployment.engine_args.get("max_model_len", 2048))
    target = facts.get("max_target_positions")
    decoder = min(max_len, target) if type(target) is int and target > 0 else max_len
    return {
        "image_tokens": tokens_per_image(version.architecture, facts, fixed_image_tokens or max_len),
        "decoder_len": decoder,
    }


def _reach_image_tokens(endpoints: dict[str, EndpointInfo]) -> None:
    """Give each endpoint the largest image figure of what a request to it may reach: its fallbacks (the
    request is reserved before a hop is known) and a composite's hops with theirs; 0 (the fixed bound)
    where nothing is known."""

    def reached(name: str, seen: set[str]) -> int:
        info = endpoints.get(name)
        if info is None or name in seen:
            return 0
        seen.add(name)
        most = info.image_tokens
        for hop in (*(info.composite.hops() if info.composite else ()), info.fallback):
            if hop:
                most = max(most, reached(hop, seen))
        return most

    for name, info in list(endpoints.items()):
        most = reached(name, set())
        if most != info.image_tokens:
            endpoints[name] = replace(info, image_tokens=most)


def _sharing(endpoint) -> dict:
    """An endpoint's shares (prefetched) as EndpointInfo's fields."""
    shares = endpoint.shares.all()
    return {
        "shared_teams": frozenset(s.team_id for s in shares if s.team_id),
        "shared_departments": frozenset(s.department_id for s in shares if s.department_id),
        "shared_organisation": any(s.organisation for s in shares),
        "owner": endpoint.owner_team.slug,
    }


class Balancer:
    """Least outstanding requests per replica, in this process."""

    def __init__(self):
        self.outstanding: dict[int, int] = {}

    def pick(self, replicas: list[ReplicaInfo], exclude: set[int]) -> ReplicaInfo | None:
        candidates = [r for r in replicas if r.id not in exclude]
        if len(candidates) < 2:
            return candidates[0] if candidates else None
        least = min(self.outstanding.get(r.id, 0) for r in candidates)
        return random.choice([r for r in candidates if self.outstanding.get(r.id, 0) == least])  # noqa: S311

    def acquire(self, replica: ReplicaInfo) -> None:
        self.outstanding[replica.id] = self.outstanding.get(replica.id, 0) + 1

    def release(self, replica: ReplicaInfo) -> None:
        self.outstanding[replica.id] = max(0, self.outstanding.get(replica.id, 1) - 1)


def replicas_for(route: Route, snapshot: Snapshot) -> list[ReplicaInfo]:
    """The ready replicas that serve the route: for an adapter, those that have loaded it (one whose load
    failed, whose files are still copying, or of an older generation answers 404 for it)."""
    if route.adapter:
        return snapshot.adapter_replicas.get((route.deployment, route.adapter), [])
    return snapshot.replicas.get(route.deployment, [])


def choose_route(
    endpoint: EndpointInfo, snapshot: Snapshot, *, chat: bool = False, sticky: bytes = b""
) -> Route | None:
    """A route by weight among those with a ready replica that serves it (``replicas_for``; and, for a chat
    call, whose version has a chat template): by ``sticky`` (see ``sticky_key``) when given, else at random."""
    live = [r for r in endpoint.routes if r.weight > 0 and replicas_for(r, snapshot) and (r.chat or not chat)]
    if len(live) < 2:
        return live[0] if live else None
    if sticky:
        return sticky_route(live, endpoint.name, sticky)
    return random.choices(live, weights=[r.weight for r in live])[0]  # noqa: S311


STICKY_VALUE_MAX = 256  # bytes of a header's value that pick the variant


def sticky_key(endpoint: EndpointInfo, key_id: str, headers: dict[bytes, bytes]) -> bytes:
    """What assigns a request to a variant of ``endpoint``: the caller's key id, or the sticky header's
    value; empty (random by weight) when the endpoint is not sticky or the request lacks the header."""
    if endpoint.sticky_by == "api_key":
        return key_id.encode()
    if endpoint.sticky_by == "header" and endpoint.sticky_header:
        return headers.get(endpoint.sticky_header, b"")[:STICKY_VALUE_MAX]
    return b""


_LN_2_53 = 53 * math.log(2)  # -ln(u) for a 53-bit draw u = (drawn + 1) / 2**53: _LN_2_53 - ln(drawn + 1)


def sticky_route(routes: list[Route], salt: str, key: bytes) -> Route:
    """Weighted rendezvous hashing: each route draws a stable uniform u in (0, 1] from the key and its own
    identity (deployment, adapter), and the least -ln(u) / weight wins. Those are exponential with rate the
    weight, so over many keys each route gets its weight's share; and as no route's draw depends on the
    others, a route added, removed or reweighted moves only keys to or from itself, never between two
    others (a canary, or an arm briefly without a ready replica, reshuffles no one else). The endpoint's
    name salts the hash (a client's variant on one endpoint says nothing of another's)."""
    keyed = hashlib.blake2b(salt.encode() + b"\x00" + key + b"\x00", digest_size=8)  # copied per route
    best, least = routes[0], math.inf
    seen: dict[tuple[str, str], int] = {}
    for route in routes:
        ident = (route.deployment, route.adapter)
        nth = seen[ident] = seen.get(ident, -1) + 1
        draw = keyed.copy()
        draw.update(f"{route.deployment}\x00{route.adapter}".encode())
        if nth:  # a duplicate route draws on its own, for its own share (as random.choices gives it)
            draw.update(b"\x00%d" % nth)
        drawn = int.from_bytes(draw.digest()) >> 11
        # a weight of 0 never wins
        score = (_LN_2_53 - math.log(drawn + 1)) / route.weight if route.weight > 0 else math.inf
        if score < least:
            best, least = route, score
    return best


def price_micros(endpoint: EndpointInfo, input_tokens: int, output_tokens: int, audio_ms: int = 0) -> int:
    """Cost in micro-units of money (prices are per million tokens, so micro-units per token; audio is
    priced per second)."""
    return int(
        round(
            endpoint.input_micros_per_token * input_tokens
            + endpoint.output_micros_per_token * output_tokens
            + endpoint.audio_micros_per_second * audio_ms / 1000
        )
    )


DECIMAL_MICRO = Decimal("0.000001")

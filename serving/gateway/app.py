"""The gateway: a lean ASGI app for ``/v1/*`` mounted ahead of Django (see portfolio/asgi.py).

Per request it authenticates the key from memory, checks the body against the route's allow-list and
works out the most the engine can bill for it (payloads.py), admits that worst case against limits and
budgets with one Redis script, sends it on to a replica (forwarding.py: least outstanding requests, over
the keep-alive connections of upstream.py, streaming event by event), and after the response is sent
settles the reservation and appends one usage event to a Redis stream in a single round trip. PostgreSQL is never touched per request.

An endpoint's fallbacks are followed only while the key may call them too (same team, in the key's
scopes, same kind of model, n within the hop's cap); a request is reserved for the costliest hop it may
take, and priced and metered by the endpoint that answered. A composite endpoint (router, cascade, vote)
takes one branch, to composite.py, once its body is checked; plain endpoints pay nothing more for them. Every error a client gets, the engine's
included, is in OpenAI's shape with the gateway's request id; requests refused by the gateway itself are
counted in ``/metrics`` by reason.

What keeps its in-memory state current runs beside the requests, never in them: the routing table's refresh
(table_refresh.py), this process's liveness in Redis (liveness.py), key invalidations (keycache.py). The
paths it serves are listed in one place, ``routes()``; a new one is a handler and a line there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import re
import time
import uuid

import orjson
from django.conf import settings

from serving.gateway import (
    access,
    admission,
    audio,
    authentication,
    composite,
    errors,
    forwarding,
    inflight,
    intake,
    keystate,
    limits,
    liveness,
    metrics,
    payloads,
    redis_pipe,
    table_refresh,
)
from serving.gateway.errors import GatewayError
from serving.gateway.events import USAGE_STREAM, Outcome, usage_event
from serving.gateway.keycache import KeyCache, KeyRecord, listen_for_invalidations
from serving.gateway.limits import Limiter
from serving.gateway.paths import ANY, Routes
from serving.gateway.relay import Renamer, read_body, respond
from serving.gateway.routing import Balancer, EndpointInfo, Snapshot, price_micros
from serving.gateway.upstream import Upstream

logger = logging.getLogger(__name__)

KINDS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
    "/v1/rerank": "rerank",
    "/v1/score": "score",
}
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class Gateway:
    def __init__(self):
        self.keys = KeyCache(settings.GATEWAY_KEY_CACHE_SIZE)
        self.balancer = Balancer()
        self.snapshot = Snapshot()
        self.table_version = 0  # kept by table_refresh.py, as is table_loaded_at
        self.table_loaded_at = 0.0
        self.upstream: Upstream | None = None
        self.redis = None
        self.pipe: redis_pipe.RedisPipe | redis_pipe.ClientPipe | None = None
        self.limiter: Limiter | None = None
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self.process_id = uuid.uuid4().hex  # names this process's in-flight ledger in Redis
        self._id_prefix, self._ids = self.process_id[:20], itertools.count(1)
        self.ledger = inflight.ledger_key(self.process_id)
        self._series: dict[tuple, object] = {}  # metric children by (metric, labels)
        self.renamers: dict[tuple[str, str], Renamer] = {}  # by (engine model, public name)
        self._cut_fallbacks: set[tuple[str, str]] = set()  # logged once per process
        self.routes = routes()

    # --- Life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(settings.REDIS_URL)
        self.pipe = redis_pipe.connect(settings.REDIS_URL, self.redis)
        self.limiter = Limiter(self.pipe)
        self.upstream = Upstream(
            connect_timeout=settings.GATEWAY_CONNECT_TIMEOUT, read_timeout=settings.GATEWAY_UPSTREAM_TIMEOUT
        )
        await table_refresh.refresh(self)
        await liveness.register(self.pipe, self.process_id)
        # Off the request path: the routing table's upkeep, this process's liveness, key invalidations.
        self._tasks = [
            asyncio.create_task(table_refresh.keep_refreshing(self)),
            asyncio.create_task(liveness.stay_alive(self.pipe, self.process_id)),
            asyncio.create_task(listen_for_invalidations(self.redis, self.keys)),
        ]
        self._started = True
        # What is loaded by now (Django, the ASGI apps, the routing table) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise walk all of it (some 70 ms with the process
        # stopped) every few seconds under load, as requests in flight get promoted to the oldest generation.
        gc.freeze()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.upstream:
            await self.upstream.close()
        if self.pipe:
            # Requests have drained by now; the flusher reaps whatever is left in the ledger at once.
            with contextlib.suppress(Exception):
                await self.pipe.execute(("DEL", inflight.alive_key(self.process_id)))
            await self.pipe.close()
        if self.redis:
            await self.redis.aclose()
        self._started = False

    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self._started:
                await self.start()

    # --- ASGI --------------------------------------------------------------------------------------
    async def lifespan(self, scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope, receive, send) -> None:
        headers = dict(scope["headers"]) if len(scope["headers"]) < 64 else {}
        supplied = headers.get(b"x-request-id", b"")
        # Ids: this process's random prefix and a counter, unique without a uuid4 per request.
        own_id = f"{self._id_prefix}{next(self._ids):012x}"
        request_id = supplied.decode() if supplied and _VALID_REQUEST_ID.match(supplied) else own_id
        path, method = scope["path"], scope["method"]
        try:
            await self._ensure_started()
            handler = self.routes.find(method, path)
            if handler is None:
                raise GatewayError(404, f"Unknown path {method} {path}.", "not_found")
            await handler(self, scope, receive, send, headers, request_id, own_id)
        except GatewayError as exc:
            if not exc.metered:
                self._metric(metrics.REFUSED, exc.code, str(exc.status), exc.team).inc()
            extra = [(b"retry-after", str(exc.retry_after).encode())] if exc.retry_after is not None else []
            if exc.status == 401:
                extra.append((b"www-authenticate", b"Bearer"))
            if exc.billed:
                extra.append((b"x-should-retry", b"false"))
            await respond(
                send,
                exc.status,
                errors.body(exc.status, exc.message, exc.code, exc.param),
                request_id,
                extra=extra,
            )
        except Exception:
            # Redis unreachable, a bug: still an answer in OpenAI's shape, under the request id to look for.
            logger.exception("gateway: request %s failed", request_id)
            self._metric(metrics.REFUSED, "internal", "500", "-").inc()
            await respond(
                send,
                500,
                errors.body(500, f"Internal gateway error (request {request_id}).", "internal"),
                request_id,
            )

    # --- Routes (see routes() below) ---------------------------------------------------------------
    async def _metrics(self, scope, receive, send, headers, request_id: str, event_id: str) -> None:
        allowed = metrics.authorized(headers.get(b"authorization", b""), settings.METRICS_TOKEN)
        if allowed is None:
            raise GatewayError(404, f"Unknown path {scope['method']} {scope['path']}.", "not_found")
        if not allowed:
            raise GatewayError(
                401,
                "Send the scrape token: `Authorization: Bearer <PORTFOLIO_METRICS_TOKEN>`.",
                "invalid_metrics_token",
            )
        data, content_type = metrics.render()
        await respond(send, 200, data, request_id, content_type.encode())

    async def _list_models(self, scope, receive, send, headers, request_id: str, event_id: str) -> None:
        key = await authentication.authenticate_listing(self.keys, self.pipe, headers, scope)
        await respond(send, 200, access.models(self.snapshot, key), request_id)

    async def _describe_model(self, scope, receive, send, headers, request_id: str, event_id: str) -> None:
        key = await authentication.authenticate_listing(self.keys, self.pipe, headers, scope)
        try:
            model = access.model(self.snapshot, key, scope["path"][len("/v1/models/") :])
        except GatewayError as exc:
            exc.team = key.team
            raise
        await respond(send, 200, model, request_id)

    async def _proxy(
        self, scope, receive, send, headers, request_id: str, event_id: str, *, kind: str
    ) -> None:
        started = time.perf_counter()
        assert self.limiter is not None, "set by start()"
        key, ticket = await authentication.authenticate(self.keys, headers, scope, tickets_allowed=True)
        try:
            body = await read_body(receive, settings.GATEWAY_MAX_BODY_BYTES)
            payload, name = intake.parse(body)
            first = (
                access.ticket_endpoint(self.snapshot, ticket, name)
                if ticket
                else access.endpoint(self.snapshot, key, name)
            )
            shape = intake.check(kind, payload, len(body), first, name)
            if first.composite is not None:  # a router, cascade or vote: its hops are plain endpoints
                return await composite.serve(
                    self,
                    receive,
                    send,
                    request_id,
                    kind,
                    (key, headers),
                    payload,
                    shape,
                    first,
                    event_id,
                    started,
                )
            chain = (
                [first]
                if ticket
                else access.chain(
                    self.snapshot,
                    key,
                    first,
                    shape.choices,
                    chat=kind == "chat",
                    cut_fallbacks=self._cut_fallbacks,
                )
            )
            # Reserve for the costliest hop the request may take (contexts and prices differ).
            bound_tokens, bound_money = admission.reservation(shape, chain)
            outcome = Outcome(endpoint=first.name, kind=kind, shape=shape, event_id=event_id, first=first)
            verdict = await self.limiter.admit(
                key,
                tokens=bound_tokens,
                money_micros=bound_money,
                revoked_set=keystate.REVOKED_SET,
                ledger=self.ledger,
                lost_event=usage_event(key, outcome, 0.0, 0, lost=True),
                caps=admission.spend_caps(self.snapshot, key, shape, chain),
            )
            if not verdict.ok:
                if verdict.reason == "revoked":
                    self.keys.evict(key.key_id)
                raise admission.refusal(
                    key, verdict, bound_tokens, bound_money, playground=ticket is not None
                )
        except GatewayError as exc:
            exc.team = key.team
            raise
        public = ticket.model if ticket else first.name  # a ticket's model is the name it was called by
        try:
            await self._dispatch(
                receive, send, request_id, chain, public, payload, outcome, started, (key.key_id, headers)
            )
        except GatewayError as exc:
            outcome.status, outcome.error = exc.status, exc.code
            exc.team, exc.metered = key.team, True
            raise
        except Exception:
            outcome.status, outcome.error = 500, "internal"
            logger.exception("gateway: request %s failed", request_id)
            error = GatewayError(500, f"Internal gateway error (request {request_id}).", "internal")
            error.team, error.metered = key.team, True
            raise error from None
        finally:
            await self._settle(key, outcome.answered or first, verdict.reservation, outcome, started)

    # Sends an admitted request on to an engine; composite.py and audio.py call it too.
    _dispatch = forwarding.forward

    async def _settle(self, key: KeyRecord, endpoint: EndpointInfo, reservation, outcome, started) -> None:
        assert self.limiter is not None and self.pipe is not None, "set by start()"
        latency = time.perf_counter() - started
        cost = price_micros(endpoint, outcome.input_tokens, outcome.output_tokens, outcome.audio_ms)
        event = usage_event(key, outcome, latency, cost)
        team_micros, department_micros = admission.charged(key, endpoint, cost)
        commands = self.limiter.settle(
            reservation,
            tokens=outcome.input_tokens + outcome.output_tokens + payloads.audio_tokens(outcome.audio_ms),
            money_micros=cost,
            team_micros=team_micros,
            department_micros=department_micros,
        )
        commands.append(("XADD", USAGE_STREAM, "*", "e", orjson.dumps(event)))
        await self._write(commands)
        self._observe(key, outcome, latency)

    async def _write(self, commands: list[tuple]) -> None:
        """Send a settlement and its usage events in one round trip; log the events whole if that fails."""
        assert self.pipe is not None, "set by start()"
        try:
            # One round trip for the settlement and the event, as a pipeline; the first error is raised.
            replies = await self.pipe.execute(*commands)
            if len(commands) > 1 and limits.unknown_script(replies[0]):
                replies[0:1] = await self.pipe.execute(
                    limits.as_eval(commands[0])
                )  # and loads it for next time
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except Exception:
            # The response has gone out; losing the Redis write would lose the events: log them whole.
            events = b", ".join(c[4] for c in commands if c[0] == "XADD")
            logger.exception("gateway: could not record usage events %s", events.decode())

    def _observe(self, key: KeyRecord, outcome: Outcome, latency: float) -> None:
        labels = (outcome.endpoint, key.team)
        self._metric(metrics.REQUESTS, *labels, str(outcome.status)).inc()
        self._metric(metrics.LATENCY, *labels).observe(latency)
        if outcome.error:
            self._metric(metrics.ERRORS, *labels, outcome.error).inc()
        if outcome.input_tokens:
            self._metric(metrics.TOKENS, *labels, "input").inc(outcome.input_tokens)
        if outcome.output_tokens:
            self._metric(metrics.TOKENS, *labels, "output").inc(outcome.output_tokens)
        if outcome.ttft is not None:
            self._metric(metrics.TTFT, *labels).observe(outcome.ttft)

    def _metric(self, metric, *labels: str):
        """``metric.labels(*labels)``, remembered: prometheus_client's lookup costs more than the update."""
        child = self._series.get((metric, labels))
        if child is None:
            child = self._series[(metric, labels)] = metric.labels(*labels)
        return child


def routes() -> Routes:
    """Every path the gateway serves. A route served by another module joins here, one line each; its
    handler takes the gateway first, as these methods do."""
    table = Routes()
    table.add(ANY, "/metrics", Gateway._metrics)
    table.add("GET", "/v1/models", Gateway._list_models)
    table.add("GET", "/v1/models/", Gateway._describe_model, prefix=True)
    for path, kind in KINDS.items():
        table.add("POST", path, functools.partial(Gateway._proxy, kind=kind))
    for path, kind in audio.ROUTES.items():  # multipart uploads, not JSON
        table.add("POST", path, functools.partial(audio.serve, kind=kind))
    return table

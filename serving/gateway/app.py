"""The gateway: a lean ASGI app for ``/v1/*`` mounted ahead of Django (see portfolio/asgi.py).

Per request it authenticates the key from memory, checks the body against the route's allow-list and
works out the most the engine can bill for it (payloads.py), admits that worst case against limits and
budgets with one Redis script, picks a replica (least outstanding requests), proxies over a keep-alive pool
(streaming event by event), and after the response is sent settles the reservation and appends one usage
event to a Redis stream in a single round trip. PostgreSQL is never touched per request.

An endpoint's fallbacks are followed only while the key may call them too (same team, in the key's
scopes, same kind of model, n within the hop's cap); a request is reserved for the costliest hop it may
take, and priced and metered by the endpoint that answered. Every error a client gets, the engine's
included, is in OpenAI's shape with the gateway's request id; requests refused by the gateway itself are
counted in ``/metrics`` by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import re
import time
import uuid

import aiohttp
import orjson
from django.conf import settings

from serving.gateway import errors, inflight, keystate, limits, metrics, payloads, redis_pipe, tickets
from serving.gateway.keycache import KeyCache, KeyRecord, LookupBusy
from serving.gateway.limits import Limiter
from serving.gateway.routing import (
    Balancer,
    EndpointInfo,
    ReplicaInfo,
    Route,
    Snapshot,
    build_snapshot,
    choose_route,
    price_micros,
)

logger = logging.getLogger(__name__)

KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
USAGE_STREAM = "portfolio:gw:usage"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
MAX_AUTH_HEADER = 512


class GatewayError(Exception):
    def __init__(
        self, status: int, message: str, code: str, retry_after: int | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after, self.param = (
            status,
            message,
            code,
            retry_after,
            param,
        )
        self.team = "-"  # the key's team, once known (a metrics label)
        self.metered = False  # counted with the admitted requests already, not as a refusal


class Gateway:
    def __init__(self):
        self.keys = KeyCache(settings.GATEWAY_KEY_CACHE_SIZE)
        self.balancer = Balancer()
        self.snapshot = Snapshot()
        self.session: aiohttp.ClientSession | None = None
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
        self._renamers: dict[tuple[str, str], _renamer] = {}
        self._cut_fallbacks: set[tuple[str, str]] = set()  # logged once per process

    # --- Life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(settings.REDIS_URL)
        self.pipe = redis_pipe.connect(settings.REDIS_URL, self.redis)
        self.limiter = Limiter(self.pipe)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.GATEWAY_CONNECT_TIMEOUT,
                sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT,
            ),
            auto_decompress=False,
        )
        await self.refresh()
        await self._register()
        self._tasks = [
            asyncio.create_task(self._refresh_loop()),
            asyncio.create_task(self._listen_for_keys()),
            asyncio.create_task(self._stay_alive()),
        ]
        self._started = True
        # What is loaded by now (Django, the ASGI apps, the routing table) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise walk all of it (some 70 ms with the process
        # stopped) every few seconds under load, as requests in flight get promoted to the oldest generation.
        gc.freeze()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.session:
            await self.session.close()
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

    async def refresh(self) -> None:
        self.snapshot = await asyncio.to_thread(build_snapshot)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.GATEWAY_REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:
                logger.exception("gateway: routing refresh failed; keeping the previous table")

    async def _register(self) -> None:
        for reply in await self.pipe.execute(*inflight.register_commands(self.process_id)):
            if isinstance(reply, Exception):
                raise reply

    async def _stay_alive(self) -> None:
        while True:
            await asyncio.sleep(inflight.ALIVE_SECONDS / 6)
            try:
                await self._register()
            except Exception:
                logger.exception("gateway: could not renew this process's liveness in Redis")

    async def _listen_for_keys(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(keystate.INVALIDATE_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.keys.evict(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("gateway: key invalidation listener failed; retrying")
                self.keys.clear()  # messages may have been missed: start from a cold cache
                await asyncio.sleep(1)

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
            if path == "/metrics":
                allowed = metrics.authorized(headers.get(b"authorization", b""), settings.METRICS_TOKEN)
                if allowed is None:
                    raise GatewayError(404, f"Unknown path {method} {path}.", "not_found")
                if not allowed:
                    raise GatewayError(
                        401,
                        "Send the scrape token: `Authorization: Bearer <PORTFOLIO_METRICS_TOKEN>`.",
                        "invalid_metrics_token",
                    )
                data, content_type = metrics.render()
                await _respond(send, 200, data, request_id, content_type.encode())
            elif path == "/v1/models" and method == "GET":
                key = await self._authenticate_listing(headers, scope)
                await _respond(send, 200, self._models(key), request_id)
            elif path.startswith("/v1/models/") and method == "GET":
                key = await self._authenticate_listing(headers, scope)
                try:
                    model = self._model(key, path[len("/v1/models/") :])
                except GatewayError as exc:
                    exc.team = key.team
                    raise
                await _respond(send, 200, model, request_id)
            elif path in KINDS and method == "POST":
                await self._proxy(scope, receive, send, headers, request_id, KINDS[path], own_id)
            else:
                raise GatewayError(404, f"Unknown path {method} {path}.", "not_found")
        except GatewayError as exc:
            if not exc.metered:
                self._metric(metrics.REFUSED, exc.code, str(exc.status), exc.team).inc()
            extra = [(b"retry-after", str(exc.retry_after).encode())] if exc.retry_after is not None else []
            if exc.status == 401:
                extra.append((b"www-authenticate", b"Bearer"))
            await _respond(
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
            await _respond(
                send,
                500,
                errors.body(500, f"Internal gateway error (request {request_id}).", "internal"),
                request_id,
            )

    async def _authenticate(
        self, headers: dict, scope, *, tickets_allowed: bool = False
    ) -> tuple[KeyRecord, tickets.Ticket | None]:
        raw = headers.get(b"authorization", b"")
        if not raw or len(raw) > MAX_AUTH_HEADER or not raw[:7].lower() == b"bearer ":
            raise GatewayError(
                401, "Missing or malformed API key: send `Authorization: Bearer slm_…`.", "invalid_api_key"
            )
        presented = raw[7:].strip().decode("latin-1")
        if tickets_allowed and presented.startswith(tickets.PREFIX):
            ticket = tickets.verify(presented)
            if ticket is None:
                raise GatewayError(401, "Invalid or expired playground ticket.", "invalid_api_key")
            return _ticket_key(ticket), ticket
        try:
            key = await self.keys.authenticate(presented)
        except LookupBusy:
            raise GatewayError(
                503,
                "Too many API keys are being checked at once; retry in a moment.",
                "key_lookup_busy",
                retry_after=1,
            ) from None
        if key is None:
            raise GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
        client = scope.get("client")
        if not key.allows_ip(client[0] if client else None):
            error = GatewayError(403, "This API key may not be used from this address.", "ip_not_allowed")
            error.team = key.team
            raise error
        return key, None

    async def _authenticate_listing(self, headers: dict, scope) -> KeyRecord:
        """The key of a /v1/models call, checked against the revocation set too (as admission does)."""
        key, _ = await self._authenticate(headers, scope)
        (revoked,) = await self.pipe.execute(("ZSCORE", keystate.REVOKED_SET, key.key_id))
        if isinstance(revoked, Exception):
            raise revoked
        if revoked is not None:
            self.keys.evict(key.key_id)
            raise GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
        return key

    @staticmethod
    def _may_call(key: KeyRecord, endpoint: EndpointInfo) -> bool:
        return endpoint.team_id == key.team_id and (not key.scopes or endpoint.name in key.scopes)

    def _models(self, key: KeyRecord) -> bytes:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": key.team}
            for name, endpoint in sorted(self.snapshot.endpoints.items())
            if self._may_call(key, endpoint)
        ]
        return orjson.dumps({"object": "list", "data": data})

    def _model(self, key: KeyRecord, name: str) -> bytes:
        endpoint = self.snapshot.endpoints.get(name)
        if endpoint is None or not self._may_call(key, endpoint):
            raise _no_such_model(name)
        return orjson.dumps({"id": name, "object": "model", "created": 0, "owned_by": key.team})

    def _endpoint(self, key: KeyRecord, name) -> EndpointInfo:
        endpoint = self.snapshot.endpoints.get(name) if isinstance(name, str) else None
        if endpoint is None or not self._may_call(key, endpoint):
            raise _no_such_model(name)
        return endpoint

    def _chain(self, key: KeyRecord, first: EndpointInfo, choices: int, *, chat: bool) -> list[EndpointInfo]:
        """The endpoint and the fallbacks this request may go on to: each hop is checked as the first was
        (team, scopes), and must serve the same kind of model and allow as many completions; the chain
        stops at the first that does not (a fallback set in another team is never followed)."""
        chain, current = [first], first
        while current.fallback:
            hop = self.snapshot.endpoints.get(current.fallback)
            if hop is None or any(hop.name == seen.name for seen in chain):
                break
            if chat and hop.no_chat:
                break
            if not self._may_call(key, hop) or hop.embedding != first.embedding or hop.max_n < choices:
                if (current.name, hop.name) not in self._cut_fallbacks and hop.team_id != current.team_id:
                    self._cut_fallbacks.add((current.name, hop.name))
                    logger.warning(
                        "gateway: endpoint %s falls back to %s of another team; not followed",
                        current.name,
                        hop.name,
                    )
                break
            chain.append(hop)
            current = hop
        return chain

    def _ticket_endpoint(self, ticket: tickets.Ticket, name) -> EndpointInfo:
        """The one model a playground ticket may call, as an endpoint of its own."""
        deployment = self.snapshot.deployments.get(ticket.deployment)
        if (
            name != ticket.model
            or deployment is None
            or deployment.team_id != ticket.team_id
            or (name != ticket.deployment and name not in deployment.adapters)
        ):
            raise _no_such_model(name)
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
        )

    async def _proxy(self, scope, receive, send, headers, request_id: str, kind: str, event_id: str) -> None:
        started = time.perf_counter()
        key, ticket = await self._authenticate(headers, scope, tickets_allowed=True)
        try:
            body = await _read_body(receive, settings.GATEWAY_MAX_BODY_BYTES)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise GatewayError(400, "The request body is not valid JSON.", "invalid_json") from None
            if not isinstance(payload, dict):
                raise GatewayError(400, "The request body must be a JSON object.", "invalid_json")
            name = payload.get("model")
            if name is None:
                raise GatewayError(
                    400, "You must provide a model parameter.", "missing_required_parameter", param="model"
                )
            first = self._ticket_endpoint(ticket, name) if ticket else self._endpoint(key, name)
            if first.embedding != (kind == "embedding"):
                use = "/v1/embeddings" if first.embedding else "/v1/chat/completions or /v1/completions"
                raise GatewayError(
                    400,
                    f"The model `{name}` is {'an' if first.embedding else 'not an'} embedding "
                    f"model: call {use} with it.",
                    "unsupported_endpoint",
                    param="model",
                )
            if kind == "chat" and first.no_chat:
                raise GatewayError(
                    400,
                    f"The model `{name}` has no chat template ({first.no_chat}): call "
                    "/v1/completions with it, or give that version a chat template (on its registry page, "
                    "or POST /api/v1/models/{model}/versions/{number}/chat-template).",
                    "unsupported_endpoint",
                    param="model",
                )
            try:
                shape = payloads.check(
                    kind,
                    payload,
                    len(body),
                    max_n=min(first.max_n, settings.GATEWAY_MAX_N),
                    max_inputs=settings.GATEWAY_MAX_INPUTS,
                )
            except payloads.PayloadError as exc:
                raise GatewayError(400, exc.message, exc.code, param=exc.param) from None
            chain = [first] if ticket else self._chain(key, first, shape.choices, chat=kind == "chat")
            # Reserve for the costliest hop the request may take (contexts and prices differ).
            bound_tokens = bound_money = 0
            for hop in chain:
                hop_tokens, hop_money = payloads.worst_case(
                    shape, hop.max_model_len, hop.input_micros_per_token, hop.output_micros_per_token
                )
                bound_tokens, bound_money = max(bound_tokens, hop_tokens), max(bound_money, hop_money)
            outcome = _Outcome(endpoint=first.name, kind=kind, shape=shape, event_id=event_id)
            verdict = await self.limiter.admit(
                key,
                tokens=bound_tokens,
                money_micros=bound_money,
                revoked_set=keystate.REVOKED_SET,
                ledger=self.ledger,
                lost_event=self._event(key, outcome, 0.0, 0, lost=True),
            )
            if not verdict.ok:
                self._refuse(key, verdict, bound_tokens, bound_money, playground=ticket is not None)
        except GatewayError as exc:
            exc.team = key.team
            raise
        public = name if ticket else first.name
        try:
            await self._dispatch(receive, send, request_id, chain, public, payload, outcome, started)
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

    def _refuse(self, key: KeyRecord, verdict, tokens: int, money: int, *, playground: bool) -> None:
        """Why admission said no, in words a client can act on."""
        subject = "the prompt box (per user)" if playground else "this key"
        if verdict.reason == "revoked":
            self.keys.evict(key.key_id)
            raise GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
        if verdict.reason == "rpm":
            raise GatewayError(
                429,
                f"Rate limit reached for requests per minute on {subject}.",
                "rate_limit_exceeded",
                retry_after=max(1, verdict.retry_after),
            )
        if verdict.reason == "tpm":
            if key.tpm_limit is not None and tokens > key.tpm_limit:
                raise GatewayError(
                    429,
                    f"This request could use up to {tokens} tokens, more than the limit of "
                    f"{key.tpm_limit} tokens per minute on {subject}: lower max_tokens (or n, or "
                    "the prompt).",
                    "rate_limit_exceeded",
                    param="max_tokens",
                )
            raise GatewayError(
                429,
                f"Rate limit reached for tokens per minute on {subject}.",
                "rate_limit_exceeded",
                retry_after=max(1, verdict.retry_after),
            )
        if verdict.remaining <= 0:
            what = "token budget" if verdict.reason == "budget" else "budget"
            raise GatewayError(
                429,
                f"The monthly {what} of {subject} is used up (or held by requests in flight).",
                "insufficient_quota",
                retry_after=verdict.retry_after,
            )
        if verdict.reason == "budget":
            cost = f"could use up to {tokens} tokens, more than the {verdict.remaining} tokens left"
        else:
            cost = f"could cost up to {_money(money)}, more than the {_money(verdict.remaining)} left"
        raise GatewayError(
            429,
            f"This request {cost} of the monthly budget of {subject}: lower max_tokens (or n, "
            "or the prompt).",
            "insufficient_quota",
            param="max_tokens",
        )

    async def _dispatch(
        self,
        receive,
        send,
        request_id,
        chain: list[EndpointInfo],
        public: str,
        payload: dict,
        outcome: _Outcome,
        started,
    ) -> None:
        for current in chain:
            route = choose_route(current, self.snapshot, chat=outcome.kind == "chat")
            if route is None:
                continue
            replicas = self.snapshot.replicas.get(route.deployment, [])
            excluded: set[int] = set()
            retried: set[int] = set()
            while (replica := self.balancer.pick(replicas, excluded)) is not None:
                outcome.deployment, outcome.adapter, outcome.version_id = (
                    route.deployment,
                    route.adapter,
                    route.version_id,
                )
                outcome.replica_id = replica.id
                upstream = dict(payload, model=route.upstream_model)
                if outcome.stream:
                    # Always asked of the engine, to meter from its counts; passed on only as the client asked.
                    upstream["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
                self.balancer.acquire(replica)
                try:
                    response = await self.session.post(
                        f"{replica.base_url}{_PATHS[outcome.kind]}",
                        data=orjson.dumps(upstream),
                        headers={
                            "Authorization": replica.auth,
                            "Content-Type": "application/json",
                            "X-Request-ID": request_id,
                        },
                    )
                except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
                    self.balancer.release(replica)
                    if isinstance(exc, aiohttp.ConnectionTimeoutError):
                        _passed_over(request_id, replica, exc)
                        excluded.add(replica.id)  # could not even connect: another replica may answer
                        continue
                    raise GatewayError(504, "The model did not answer in time.", "upstream_timeout") from None
                except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
                    # Could not connect; nothing reached the client yet: another replica may answer.
                    self.balancer.release(replica)
                    _passed_over(request_id, replica, exc)
                    excluded.add(replica.id)
                    continue
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
                    # Most often a pooled keep-alive connection that the engine had closed (restarted on
                    # the same port, or idle too long): one more try on a fresh connection before the
                    # replica is passed over. Inference has no side effects, so a retry is safe.
                    self.balancer.release(replica)
                    if replica.id in retried:
                        _passed_over(request_id, replica, exc)
                        excluded.add(replica.id)
                    retried.add(replica.id)
                    continue
                # Metered and priced by the endpoint that answered.
                outcome.answered, outcome.endpoint = current, current.name
                try:
                    rename = self._renamers.get((route.upstream_model, public))
                    if rename is None:
                        rename = self._renamers[(route.upstream_model, public)] = _renamer(
                            route.upstream_model, public
                        )
                    if outcome.stream and response.status == 200:
                        await _relay_stream(receive, send, response, request_id, rename, outcome, started)
                    else:
                        await _relay_whole(send, response, request_id, rename, outcome)
                except TimeoutError:
                    if outcome.sent:
                        outcome.status, outcome.error = 504, "upstream_timeout"
                        return
                    raise GatewayError(504, "The model did not answer in time.", "upstream_timeout") from None
                finally:
                    response.release()
                    self.balancer.release(replica)
                return
        first, snapshot = chain[0], self.snapshot
        logger.warning(
            "gateway: request %s: no replica of endpoint %s answered (tried %s; routes to %s; ready "
            "replicas in the routing table of %.3f: %s)",
            request_id,
            first.name,
            ", ".join(hop.name for hop in chain),
            ", ".join(r.deployment for r in first.routes),
            snapshot.built_at,
            {name: len(rs) for name, rs in snapshot.replicas.items()},
        )
        raise GatewayError(
            503,
            f"No replica of `{public}` is ready to serve (or all failed to connect).",
            "no_replica_available",
        )

    async def _settle(self, key: KeyRecord, endpoint: EndpointInfo, reservation, outcome, started) -> None:
        latency = time.perf_counter() - started
        cost = price_micros(endpoint, outcome.input_tokens, outcome.output_tokens)
        event = self._event(key, outcome, latency, cost)
        commands = self.limiter.settle(
            reservation, tokens=outcome.input_tokens + outcome.output_tokens, money_micros=cost
        )
        commands.append(("XADD", USAGE_STREAM, "*", "e", orjson.dumps(event)))
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
            # The response has gone out; losing the Redis write would lose the event: log it whole.
            logger.exception("gateway: could not record usage event %s", orjson.dumps(event).decode())
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

    @staticmethod
    def _event(key: KeyRecord, outcome: _Outcome, latency: float, cost: int, *, lost: bool = False) -> dict:
        """The usage event of a request: as it ended, or (``lost``) as the in-flight ledger keeps it in case
        this process dies first: the same id, so that only one of the two is ever stored."""
        return {
            "id": outcome.event_id,
            "at": time.time(),
            "key": key.pk,
            "team": key.team_id,
            "department": key.department_id,
            "endpoint": outcome.endpoint,
            "deployment": outcome.deployment,
            "adapter": outcome.adapter,
            "version": outcome.version_id,
            "replica": outcome.replica_id,
            "kind": outcome.kind,
            "stream": int(outcome.stream),
            "in": outcome.input_tokens,
            "out": outcome.output_tokens,
            "latency_ms": int(latency * 1000),
            "ttft_ms": None if outcome.ttft is None else int(outcome.ttft * 1000),
            "status": inflight.LOST_STATUS if lost else outcome.status,
            "error": inflight.LOST_ERROR if lost else outcome.error,
            "cost_micros": cost,
        }

    def _metric(self, metric, *labels: str):
        """``metric.labels(*labels)``, remembered: prometheus_client's lookup costs more than the update."""
        child = self._series.get((metric, labels))
        if child is None:
            child = self._series[(metric, labels)] = metric.labels(*labels)
        return child


def _no_such_model(name) -> GatewayError:
    shown = name if isinstance(name, str) and len(name) <= 256 else "…"
    return GatewayError(
        404,
        f"The model `{shown}` does not exist or you do not have access to it.",
        "model_not_found",
        param="model",
    )


def _ticket_key(ticket: tickets.Ticket) -> KeyRecord:
    """A playground ticket as a key: its team's, limited per user by the playground's own limits."""
    return KeyRecord(
        pk=0,
        key_id=f"playground-{ticket.user_id}",
        secret_hash="",
        team_id=ticket.team_id,
        team=ticket.team,
        department_id=ticket.department_id,
        scopes=frozenset(),
        networks=(),
        rpm_limit=settings.PLAYGROUND_RPM,
        tpm_limit=settings.PLAYGROUND_TPM,
        monthly_token_budget=None,
        monthly_budget_micros=None,
        expires_at=ticket.expires_at,
        revoked=False,
    )


def _money(micros: int) -> str:
    return f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".")


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


class _renamer:
    """Clients see the endpoint name they called as ``model``, never the deployment or adapter behind it."""

    __slots__ = ("endpoint", "pattern", "replacement")

    def __init__(self, upstream: str, endpoint: str):
        self.endpoint = endpoint
        self.pattern = re.compile(rb'"model"\s*:\s*"' + re.escape(upstream.encode()) + rb'"')
        self.replacement = b'"model":"' + endpoint.encode() + b'"'

    def __call__(self, chunk: bytes) -> bytes:
        return self.pattern.sub(self.replacement, chunk)


_PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "embedding": "/v1/embeddings"}


class _Outcome:
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
    )

    def __init__(self, *, endpoint: str, kind: str, shape: payloads.Shape, event_id: str):
        self.endpoint, self.kind, self.shape, self.event_id = endpoint, kind, shape, event_id
        self.stream = shape.stream
        self.deployment = self.adapter = ""
        self.version_id = self.replica_id = None
        self.status, self.error = 0, ""
        self.input_tokens = self.output_tokens = 0
        self.ttft: float | None = None
        self.sent = False
        self.answered: EndpointInfo | None = None

    def take_usage(self, usage) -> None:
        if isinstance(usage, dict):
            self.input_tokens = int(usage.get("prompt_tokens") or 0)
            self.output_tokens = int(usage.get("completion_tokens") or 0)


class _StreamUsage:
    """The engine's counts of a stream: its final usage chunk when it came, else (the client went away
    first) the latest count of each choice. vLLM's per-chunk usage counts one choice: its prompt and what
    that choice has produced so far (choice i belongs to prompt i // n), not the whole request."""

    __slots__ = ("completion", "final", "n", "prompt")

    def __init__(self, n: int):
        self.n = max(1, n)
        self.prompt: dict[int, int] = {}
        self.completion: dict[int, int] = {}
        self.final: tuple[int, int] | None = None

    def take(self, usage: dict, choices: list) -> None:
        counts = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        if not choices:
            self.final = counts
            return
        index = choices[0].get("index", 0) if isinstance(choices[0], dict) else 0
        index = index if isinstance(index, int) else 0
        self.prompt[index // self.n], self.completion[index] = counts

    def totals(self) -> tuple[int, int]:
        return self.final or (sum(self.prompt.values()), sum(self.completion.values()))


async def _read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(499, "Client closed the request.", "client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"The request body exceeds {limit} bytes.", "request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes = b"application/json",
    extra: list | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _relay_whole(send, response: aiohttp.ClientResponse, request_id: str, rename, outcome) -> None:
    data = await response.read()
    outcome.status = response.status
    content_type = response.headers.get("Content-Type", "application/json").encode()
    if response.status == 200:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
            parsed = orjson.loads(data)
            outcome.take_usage(parsed.get("usage"))
            if "model" in parsed:
                parsed["model"] = rename.endpoint
                data = orjson.dumps(parsed)
    else:
        outcome.error = "upstream_error"
        data, content_type = (
            errors.from_upstream(response.status, data, _PATHS[outcome.kind]),
            b"application/json",
        )
    await _respond(send, response.status, data, request_id, content_type)
    outcome.sent = True


def _pass_event(event: bytes, rename, shape: payloads.Shape, usage: _StreamUsage) -> bytes | None:
    """One server-sent event as the client gets it (None: not at all), its usage noted. The engine always
    sends usage; the client gets the final usage chunk (no choices) only if it asked for it
    (``stream_options.include_usage``), and usage on the other chunks only if it also asked for that
    (``continuous_usage_stats``)."""
    if not (event.startswith(b"data: {") and b'"usage"' in event):
        return rename(event) + b"\n\n"
    try:
        parsed = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return rename(event) + b"\n\n"
    counts, choices = parsed.get("usage"), parsed.get("choices")
    if not isinstance(counts, dict):
        return rename(event) + b"\n\n"
    choices = choices if isinstance(choices, list) else []
    usage.take(counts, choices)
    if not choices:
        return rename(event) + b"\n\n" if shape.include_usage else None
    if shape.continuous_usage:
        return rename(event) + b"\n\n"
    del parsed["usage"]
    if "model" in parsed:
        parsed["model"] = rename.endpoint
    return b"data: " + orjson.dumps(parsed) + b"\n\n"


async def _relay_stream(
    receive, send, response: aiohttp.ClientResponse, request_id: str, rename, outcome, started: float
) -> None:
    """Pass server-sent events through as they come; meter from the engine's counts; stop (and bill what
    was produced) as soon as the client goes away."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    outcome.status, outcome.sent = 200, True
    disconnected = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                return

    watcher = asyncio.create_task(watch())
    usage = _StreamUsage(outcome.shape.n)
    pending = b""
    try:
        async for chunk in response.content.iter_any():
            if outcome.ttft is None:
                outcome.ttft = time.perf_counter() - started
            pending += chunk
            *events, pending = pending.split(b"\n\n")  # events are whole before they are passed on
            passed = [out for event in events if (out := _pass_event(event, rename, outcome.shape, usage))]
            if disconnected.is_set():
                outcome.status, outcome.error = 499, "client_disconnected"
                return
            if passed:
                await send({"type": "http.response.body", "body": b"".join(passed), "more_body": True})
        await send({"type": "http.response.body", "body": rename(pending) if pending.strip() else b""})
    finally:
        watcher.cancel()
        outcome.input_tokens, outcome.output_tokens = usage.totals()

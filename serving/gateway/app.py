"""The gateway: a lean ASGI app for ``/v1/*`` mounted ahead of Django (see portfolio/asgi.py).

Per request it authenticates the key from memory, admits it against limits and budgets with one Redis
script, picks a replica (least outstanding requests), proxies over a keep-alive pool (streaming chunk by
chunk), and after the response is sent settles the reservation and appends one usage event to a Redis
stream in a single round trip. PostgreSQL is never touched per request.
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

from serving.gateway import errors, inflight, keystate, metrics, redis_pipe
from serving.gateway.keycache import KeyCache, KeyRecord
from serving.gateway.limits import Limiter
from serving.gateway.routing import (
    Balancer,
    EndpointInfo,
    ReplicaInfo,
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
    def __init__(self, status: int, message: str, code: str, retry_after: int | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after, self.param = status, message, code, retry_after, param


class Gateway:
    def __init__(self):
        self.keys = KeyCache()
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

    # --- Life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(settings.REDIS_URL)
        self.pipe = redis_pipe.connect(settings.REDIS_URL, self.redis)
        self.limiter = Limiter(self.pipe)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.GATEWAY_CONNECT_TIMEOUT,
                                          sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT),
            auto_decompress=False,
        )
        await self.refresh()
        await self._register()
        self._tasks = [asyncio.create_task(self._refresh_loop()), asyncio.create_task(self._listen_for_keys()),
                       asyncio.create_task(self._stay_alive())]
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
                self.keys = KeyCache()  # messages may have been missed: start from a cold cache
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
                data, content_type = metrics.render()
                await _respond(send, 200, data, request_id, content_type.encode())
            elif path == "/v1/models" and method == "GET":
                key = await self._authenticate(headers, scope)
                await _respond(send, 200, self._models(key), request_id)
            elif path in KINDS and method == "POST":
                await self._proxy(scope, receive, send, headers, request_id, KINDS[path], own_id)
            else:
                raise GatewayError(404, f"Unknown path {method} {path}.", "not_found")
        except GatewayError as exc:
            extra = [(b"retry-after", str(exc.retry_after).encode())] if exc.retry_after is not None else []
            if exc.status == 401:
                extra.append((b"www-authenticate", b"Bearer"))
            await _respond(send, exc.status, errors.body(exc.status, exc.message, exc.code, exc.param), request_id,
                           extra=extra)

    async def _authenticate(self, headers: dict, scope) -> KeyRecord:
        raw = headers.get(b"authorization", b"")
        if not raw or len(raw) > MAX_AUTH_HEADER or not raw[:7].lower() == b"bearer ":
            raise GatewayError(401, "Missing or malformed API key: send `Authorization: Bearer slm_…`.", "invalid_api_key")
        key = await self.keys.authenticate(raw[7:].strip().decode("latin-1"))
        if key is None:
            raise GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
        client = scope.get("client")
        if not key.allows_ip(client[0] if client else None):
            raise GatewayError(403, "This API key may not be used from this address.", "ip_not_allowed")
        return key

    def _models(self, key: KeyRecord) -> bytes:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": key.team}
            for name, endpoint in sorted(self.snapshot.endpoints.items())
            if endpoint.team_id == key.team_id and (not key.scopes or name in key.scopes)
        ]
        return orjson.dumps({"object": "list", "data": data})

    def _endpoint(self, key: KeyRecord, name) -> EndpointInfo:
        endpoint = self.snapshot.endpoints.get(name) if isinstance(name, str) else None
        if endpoint is None or endpoint.team_id != key.team_id or (key.scopes and name not in key.scopes):
            raise GatewayError(404, f"The model `{name}` does not exist or you do not have access to it.",
                               "model_not_found", param="model")
        return endpoint

    async def _proxy(self, scope, receive, send, headers, request_id: str, kind: str, event_id: str) -> None:
        started = time.perf_counter()
        key = await self._authenticate(headers, scope)
        body = await _read_body(receive, settings.GATEWAY_MAX_BODY_BYTES)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise GatewayError(400, "The request body is not valid JSON.", "invalid_json") from None
        if not isinstance(payload, dict):
            raise GatewayError(400, "The request body must be a JSON object.", "invalid_json")
        endpoint = self._endpoint(key, payload.get("model"))
        stream = bool(payload.get("stream")) and kind != "embedding"
        max_tokens = payload.get("max_tokens", payload.get("max_completion_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise GatewayError(400, "max_tokens must be a positive integer.", "invalid_value", param="max_tokens")
        # Upper bounds, so that concurrent requests can never together overspend: a prompt has at most one
        # token per byte (plus the chat template), and the output at most max_tokens (or the context).
        bound_in = len(body) + 64
        bound_out = 0 if kind == "embedding" else (max_tokens or endpoint.max_model_len)
        outcome = _Outcome(endpoint=endpoint.name, kind=kind, stream=stream, event_id=event_id)
        verdict = await self.limiter.admit(key, tokens=bound_in + bound_out,
                                           money_micros=price_micros(endpoint, bound_in, bound_out),
                                           revoked_set=keystate.REVOKED_SET, ledger=self.ledger,
                                           lost_event=self._event(key, outcome, 0.0, 0, lost=True))
        if not verdict.ok:
            if verdict.reason == "revoked":
                self.keys.evict(key.key_id)
                raise GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
            if verdict.reason == "budget":
                raise GatewayError(429, "This key's monthly budget is used up.", "insufficient_quota",
                                   retry_after=verdict.retry_after)
            limit = "requests" if verdict.reason == "rpm" else "tokens"
            raise GatewayError(429, f"Rate limit reached for {limit} per minute on this key.", "rate_limit_exceeded",
                               retry_after=max(1, verdict.retry_after))
        try:
            await self._dispatch(receive, send, request_id, endpoint, payload, outcome, started)
        except GatewayError as exc:
            outcome.status, outcome.error = exc.status, exc.code
            raise
        except Exception:
            outcome.status, outcome.error = 500, "internal"
            logger.exception("gateway: request %s failed", request_id)
            raise GatewayError(500, f"Internal gateway error (request {request_id}).", "internal") from None
        finally:
            await self._settle(key, endpoint, verdict.reservation, outcome, started)

    async def _dispatch(self, receive, send, request_id, endpoint: EndpointInfo, payload: dict, outcome, started) -> None:
        tried: set[str] = set()
        current: EndpointInfo | None = endpoint
        while current is not None and current.name not in tried:
            tried.add(current.name)
            route = choose_route(current, self.snapshot)
            if route is not None:
                replicas = self.snapshot.replicas.get(route.deployment, [])
                excluded: set[int] = set()
                retried: set[int] = set()
                while (replica := self.balancer.pick(replicas, excluded)) is not None:
                    outcome.deployment, outcome.adapter, outcome.version_id = route.deployment, route.adapter, route.version_id
                    outcome.replica_id = replica.id
                    upstream = dict(payload, model=route.upstream_model)
                    if outcome.stream:
                        upstream["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
                    self.balancer.acquire(replica)
                    try:
                        response = await self.session.post(
                            f"{replica.base_url}{_PATHS[outcome.kind]}", data=orjson.dumps(upstream),
                            headers={"Authorization": replica.auth, "Content-Type": "application/json",
                                     "X-Request-ID": request_id},
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
                    try:
                        rename = self._renamers.get((route.upstream_model, endpoint.name))
                        if rename is None:
                            rename = self._renamers[(route.upstream_model, endpoint.name)] = _renamer(
                                route.upstream_model, endpoint.name)
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
            current = self.snapshot.endpoints.get(current.fallback) if current.fallback else None
        snapshot = self.snapshot
        logger.warning("gateway: request %s: no replica of endpoint %s answered (tried %s; routes to %s; ready "
                       "replicas in the routing table of %.3f: %s)", request_id, endpoint.name,
                       ", ".join(sorted(tried)), ", ".join(r.deployment for r in endpoint.routes),
                       snapshot.built_at, {name: len(rs) for name, rs in snapshot.replicas.items()})
        raise GatewayError(503, f"No replica of `{endpoint.name}` is ready to serve (or all failed to connect).",
                           "no_replica_available")

    async def _settle(self, key: KeyRecord, endpoint: EndpointInfo, reservation, outcome, started) -> None:
        latency = time.perf_counter() - started
        cost = price_micros(endpoint, outcome.input_tokens, outcome.output_tokens)
        event = self._event(key, outcome, latency, cost)
        commands = self.limiter.settle(reservation, tokens=outcome.input_tokens + outcome.output_tokens,
                                       money_micros=cost)
        commands.append(("XADD", USAGE_STREAM, "*", "e", orjson.dumps(event)))
        try:
            # One round trip for the settlement and the event, as a pipeline; the first error is raised.
            for reply in await self.pipe.execute(*commands):
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
            "id": outcome.event_id, "at": time.time(), "key": key.pk, "team": key.team_id,
            "department": key.department_id, "endpoint": outcome.endpoint, "deployment": outcome.deployment,
            "adapter": outcome.adapter, "version": outcome.version_id, "replica": outcome.replica_id,
            "kind": outcome.kind, "stream": int(outcome.stream), "in": outcome.input_tokens,
            "out": outcome.output_tokens, "latency_ms": int(latency * 1000),
            "ttft_ms": None if outcome.ttft is None else int(outcome.ttft * 1000),
            "status": inflight.LOST_STATUS if lost else outcome.status, "error": inflight.LOST_ERROR if lost
            else outcome.error, "cost_micros": cost,
        }

    def _metric(self, metric, *labels: str):
        """``metric.labels(*labels)``, remembered: prometheus_client's lookup costs more than the update."""
        child = self._series.get((metric, labels))
        if child is None:
            child = self._series[(metric, labels)] = metric.labels(*labels)
        return child


def _passed_over(request_id: str, replica: ReplicaInfo, exc: Exception) -> None:
    # For operators (the client only learns that no replica answered): which replica failed, and how.
    logger.warning("gateway: request %s: replica %s at %s failed before answering (%s: %s); passing it over",
                   request_id, replica.id, replica.base_url, type(exc).__name__, exc)


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
    __slots__ = ("endpoint", "kind", "stream", "deployment", "adapter", "version_id", "replica_id", "status", "error",
                 "input_tokens", "output_tokens", "ttft", "sent", "event_id")

    def __init__(self, *, endpoint: str, kind: str, stream: bool, event_id: str):
        self.endpoint, self.kind, self.stream, self.event_id = endpoint, kind, stream, event_id
        self.deployment = self.adapter = ""
        self.version_id = self.replica_id = None
        self.status, self.error = 0, ""
        self.input_tokens = self.output_tokens = 0
        self.ttft: float | None = None
        self.sent = False

    def take_usage(self, usage) -> None:
        if isinstance(usage, dict):
            self.input_tokens = int(usage.get("prompt_tokens") or 0)
            self.output_tokens = int(usage.get("completion_tokens") or 0)


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


async def _respond(send, status: int, body: bytes, request_id: str, content_type: bytes = b"application/json",
                   extra: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()), *(extra or []),
    ]})
    await send({"type": "http.response.body", "body": body})


async def _relay_whole(send, response: aiohttp.ClientResponse, request_id: str, rename, outcome) -> None:
    data = await response.read()
    outcome.status = response.status
    if response.status == 200:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
            parsed = orjson.loads(data)
            outcome.take_usage(parsed.get("usage"))
            if "model" in parsed:
                parsed["model"] = rename.endpoint
                data = orjson.dumps(parsed)
    else:
        outcome.error = "upstream_error"
    content_type = response.headers.get("Content-Type", "application/json").encode()
    await _respond(send, response.status, data, request_id, content_type)
    outcome.sent = True


async def _relay_stream(receive, send, response: aiohttp.ClientResponse, request_id: str, rename, outcome,
                        started: float) -> None:
    """Pass server-sent events through chunk by chunk; keep the latest cumulative usage; stop (and bill what
    was produced) as soon as the client goes away."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-request-id", request_id.encode()),
    ]})
    outcome.status, outcome.sent = 200, True
    disconnected = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                return

    watcher = asyncio.create_task(watch())
    pending = b""
    try:
        async for chunk in response.content.iter_any():
            if outcome.ttft is None:
                outcome.ttft = time.perf_counter() - started
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                # vLLM reports cumulative usage on every chunk (continuous_usage_stats): keep the latest.
                if line.startswith(b"data: {") and b'"usage"' in line:
                    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                        outcome.take_usage(orjson.loads(line[6:]).get("usage"))
            if disconnected.is_set():
                outcome.status, outcome.error = 499, "client_disconnected"
                return
            await send({"type": "http.response.body", "body": rename(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()

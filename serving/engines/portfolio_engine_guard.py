"""Every path of an engine behind its replica's key: an ASGI middleware that vLLM's OpenAI server loads with
``--middleware portfolio_engine_guard.RequireEngineKey`` (serving/engine_args.py puts this folder on the
engine's PYTHONPATH).

Contract: no HTTP request and no WebSocket reaches vLLM without ``Authorization: Bearer <key>`` carrying the
key in ``VLLM_API_KEY``, whatever its path or method. vLLM's own check of that key covers only /v1, /v2,
/inference and /cohere; /invocations, /tokenize, /detokenize, /pooling, /score, /rerank, /classify,
/metrics, /health, /load and whatever a later vLLM adds answer anyone who reaches the port. With this guard
the engine answers only the holders of the key (derived per replica from PORTFOLIO_ENGINE_KEY_SECRET): the
gateway, the node agent (whose health checks send it too), a fine-tune's trainer timing its team's replica
and the control worker's rollout judge.

It runs inside the engine's Python (vLLM's environment, not the platform's), so it needs only the standard
library. An engine started without a key refuses to start (the constructor raises while vLLM builds its app)
rather than serve unguarded.
"""

from __future__ import annotations

import hmac
import json
import os

KEY_VARIABLE = "VLLM_API_KEY"
REFUSAL = json.dumps(
    {
        "error": {
            "message": "This engine answers its gateway and node agent only: send the replica's key as "
            "`Authorization: Bearer <key>`.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
).encode()
REFUSAL_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(REFUSAL)).encode()),
    (b"www-authenticate", b'Bearer realm="engine"'),
]
# WebSocket close code "policy violation": closed before the handshake is accepted, the client sees a 403.
POLICY_VIOLATION = 1008


class RequireEngineKey:
    """Pure ASGI middleware: the request goes on only with the engine's bearer key, compared in constant
    time; lifespan events pass through."""

    def __init__(self, app) -> None:
        key = os.environ.get(KEY_VARIABLE, "")
        if not key:
            raise RuntimeError(f"{KEY_VARIABLE} is not set: an engine never runs without its key.")
        self.app = app
        self._key = key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self.authorised(scope.get("headers") or ()):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})
            return
        await send({"type": "http.response.start", "status": 401, "headers": REFUSAL_HEADERS})
        await send({"type": "http.response.body", "body": REFUSAL})

    def authorised(self, headers) -> bool:
        """Exactly one Authorization header, of the Bearer scheme, holding the key."""
        values = [value for name, value in headers if name.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)

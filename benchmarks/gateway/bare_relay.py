"""The naive baseline of the gateway benchmark: the least a Python gateway can do, served the same way.

An ASGI app under the same uvicorn (uvloop, httptools, one worker, the gateway's core) that reads the
request body, posts it to the upstream with the gateway's own HTTP client (``serving.gateway.upstream``)
and sends the answer back: no key, no limits, no Redis, no metering, no routing table. What it adds over a
direct call is the floor of any gateway written this way on this host (the extra process hop, the event
loop, the HTTP parsing); what ours adds over it is the cost of everything a gateway is for.

    uvicorn benchmarks.gateway.bare_relay:app   (BARE_RELAY_UPSTREAM=http://127.0.0.1:PORT)
"""

from __future__ import annotations

import os

from serving.gateway.upstream import Upstream

UPSTREAM = os.environ.get("BARE_RELAY_UPSTREAM", "http://127.0.0.1:8000")
_client: Upstream | None = None


async def app(scope, receive, send) -> None:
    global _client
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if _client is None:
        _client = Upstream(connect_timeout=5, read_timeout=30)
    response = await _client.post(UPSTREAM, scope["path"], body, [(b"Content-Type", b"application/json")])
    try:
        answer = await response.read()
    finally:
        response.release()
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(b"content-type", response.headers.get(b"content-type", b"application/json"))],
        }
    )
    await send({"type": "http.response.body", "body": answer})

"""A stand-in engine for the node agent's tests: a tiny ASGI app (200 on every path) behind the real engine
guard, served by uvicorn: ``python stand_in_engine.py HOST PORT``. Like a real engine (serving/engine_args.py)
it takes its key from VLLM_API_KEY and finds the guard on its PYTHONPATH."""

from __future__ import annotations

import sys

import uvicorn
from portfolio_engine_guard import RequireEngineKey


async def answer(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


if __name__ == "__main__":
    uvicorn.run(
        RequireEngineKey(answer), host=sys.argv[1], port=int(sys.argv[2]), lifespan="off", log_level="warning"
    )

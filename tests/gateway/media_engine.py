"""The routes a stand-in engine (fake_engine.FakeEngine with ``media=True``) adds for speech and
cross-encoder models, in vLLM 0.32's shapes (vllm/entrypoints/speech_to_text, pooling/scoring):

- ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` take a multipart form and answer
  ``{"text", "usage": {"type": "duration", "seconds"}}`` (plain text for ``response_format=text``); the
  text says how many bytes of audio arrived, so a test sees the file came through whole;
- ``/v1/rerank`` answers results by relevance and ``usage.prompt_tokens``; ``/v1/score`` one score per pair.
Its tokenizer: one token per word of the query and the document, plus two per pair.
No real Whisper or cross-encoder runs here (no such weights on the package registry): what is tested is the
gateway's part, against these shapes.
"""

from __future__ import annotations

import asyncio
import math

from aiohttp import web


def _pair_tokens(first: str, second: str) -> int:
    return len(first.split()) + len(second.split()) + 2


def _score(first: str, second: str) -> float:
    shared = set(first.lower().split()) & set(second.lower().split())
    return round(len(shared) / (1 + len(second.split())), 4)


def add_routes(engine, app: web.Application) -> None:
    def authorized(request: web.Request) -> bool:
        return (
            not engine.expected_key or request.headers.get("Authorization") == f"Bearer {engine.expected_key}"
        )

    async def audio(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
        form = await request.post()
        upload = form.get("file")
        fields = {name: form.getall(name) for name in set(form) if name != "file"}
        content = upload.file.read() if upload is not None else b""
        engine.requests.append(
            {
                "path": request.path,
                "content_type": request.headers.get("Content-Type", ""),
                "fields": fields,
                "filename": getattr(upload, "filename", None),
                "file": content,
            }
        )
        if engine.delay:
            await asyncio.sleep(engine.delay)
        text = f"heard {len(content)} bytes"
        seconds = math.ceil(max(0, len(content) - 44) / 32000)  # 16 kHz mono 16-bit, as the tests send
        if form.get("response_format") == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": seconds}})

    async def rerank(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
        body = await request.json()
        engine.requests.append({"path": request.path, **body})
        query, documents = body["query"], body["documents"]
        documents = [documents] if isinstance(documents, str) else documents
        results = sorted(
            (
                {"index": i, "document": {"text": d}, "relevance_score": _score(query, d)}
                for i, d in enumerate(documents)
            ),
            key=lambda r: -r["relevance_score"],
        )
        if body.get("top_n"):
            results = results[: body["top_n"]]
        tokens = sum(_pair_tokens(query, d) for d in documents)
        return web.json_response(
            {
                "id": "rerank-1",
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "results": results,
            }
        )

    async def score(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
        body = await request.json()
        engine.requests.append({"path": request.path, **body})
        second = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
        first = body["text_1"] if isinstance(body["text_1"], list) else [body["text_1"]] * len(second)
        first = first * len(second) if len(first) == 1 else first
        pairs = list(zip(first, second, strict=True))
        tokens = sum(_pair_tokens(a, b) for a, b in pairs)
        return web.json_response(
            {
                "id": "score-1",
                "object": "list",
                "created": 0,
                "model": body["model"],
                "data": [
                    {"index": i, "object": "score", "score": _score(a, b)} for i, (a, b) in enumerate(pairs)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            }
        )

    app.router.add_post("/v1/audio/transcriptions", audio)
    app.router.add_post("/v1/audio/translations", audio)
    app.router.add_post("/v1/rerank", rerank)
    app.router.add_post("/v1/score", score)

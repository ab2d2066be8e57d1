"""A request's body as the gateway takes it in: a JSON object that names a model, called on the path for
that kind of model, and within the route's allow-list (payloads.py; rerank.py for rerank and score; chat's
image parts in images.py)."""

from __future__ import annotations

import orjson
from django.conf import settings

from serving.gateway import images, payloads, rerank
from serving.gateway.errors import GatewayError
from serving.gateway.routing import EndpointInfo

# What a model must serve (EndpointInfo.serves) to be called on each route, and where else to call it.
SERVES = {
    "chat": "text",
    "completion": "text",
    "embedding": "embedding",
    "rerank": "score",
    "score": "score",
    "transcription": "speech",
    "translation": "speech",
}
ROUTES_OF = {
    "text": "/v1/chat/completions or /v1/completions",
    "embedding": "/v1/embeddings",
    "score": "/v1/rerank or /v1/score",
    "speech": "/v1/audio/transcriptions or /v1/audio/translations",
}
WHAT = {
    "text": "a text generation",
    "embedding": "an embedding",
    "score": "a reranking",
    "speech": "a speech",
}


def parse(body: bytes) -> tuple[dict, object]:
    """The request's JSON object and the model it names."""
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
    return payload, name


def check_serves(kind: str, first: EndpointInfo, name) -> None:
    """Refuse a call on a route the model does not serve, naming the routes it does."""
    serves = first.serves
    if first.embedding != (kind == "embedding") and serves in ("text", "embedding"):
        use = "/v1/embeddings" if first.embedding else "/v1/chat/completions or /v1/completions"
        raise GatewayError(
            400,
            f"The model `{name}` is {'an' if first.embedding else 'not an'} embedding "
            f"model: call {use} with it.",
            "unsupported_endpoint",
            param="model",
        )
    if serves != SERVES[kind]:
        raise GatewayError(
            400,
            f"The model `{name}` is {WHAT.get(serves, 'another kind of')} model: call "
            f"{ROUTES_OF.get(serves, 'another route')} with it.",
            "unsupported_endpoint",
            param="model",
        )


def check(kind: str, payload: dict, size: int, first: EndpointInfo, name) -> payloads.Shape:
    """The request's shape, once the model it names is found to serve this kind of call."""
    check_serves(kind, first, name)
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
        if kind in rerank.FIELDS:
            return rerank.check(kind, payload)
        shape = payloads.check(
            kind,
            payload,
            size,
            max_n=min(first.max_n, settings.GATEWAY_MAX_N),
            max_inputs=settings.GATEWAY_MAX_INPUTS,
        )
        if kind == "chat":
            for field in payloads.NOT_FORWARDED:  # OpenAI's, of no use to vLLM (payloads.py)
                if field in payload:
                    del payload[field]
            found = images.inspect(payload["messages"])
            if found.number:
                # An image costs the engine a bounded number of tokens, not one per byte of its URL: the
                # figure of the costliest model the call may reach (routing.py), else the configured bound,
                # else the context (which worst_case caps the prompt at anyway).
                per_image = first.image_tokens or settings.GATEWAY_IMAGE_TOKENS or first.max_model_len
                bound = shape.prompts[0] - found.url_chars + found.number * per_image
                shape = shape._replace(prompts=(bound,))
        payloads.check_logprob_entries(kind, payload, shape, settings.GATEWAY_MAX_PROMPT_LOGPROBS)
        if kind == "completion" and "max_tokens" in payload and payload["max_tokens"] is None:
            # OpenAI's null is its default of 16, which the reservation counts; vLLM took it for "to the end of
            # the context", for each of n choices, and then failed with a 500 that billed nothing.
            del payload["max_tokens"]
        return shape
    except payloads.PayloadError as exc:
        raise GatewayError(400, exc.message, exc.code, param=exc.param) from None

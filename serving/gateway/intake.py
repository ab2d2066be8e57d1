"""A request's body as the gateway takes it in: a JSON object that names a model, called on the path for
that kind of model, and within the route's allow-list (payloads.py)."""

from __future__ import annotations

import orjson
from django.conf import settings

from serving.gateway import payloads
from serving.gateway.errors import GatewayError
from serving.gateway.routing import EndpointInfo


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


def check(kind: str, payload: dict, size: int, first: EndpointInfo, name) -> payloads.Shape:
    """The request's shape, once the model it names is found to serve this kind of call."""
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
        return payloads.check(
            kind,
            payload,
            size,
            max_n=min(first.max_n, settings.GATEWAY_MAX_N),
            max_inputs=settings.GATEWAY_MAX_INPUTS,
        )
    except payloads.PayloadError as exc:
        raise GatewayError(400, exc.message, exc.code, param=exc.param) from None

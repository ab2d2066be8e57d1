"""Errors in OpenAI's JSON shape, so the official SDKs raise the right exception classes.

The gateway's own errors are made here, and so are the engine's as the gateway passes them on: vLLM
answers most errors in a shape close to OpenAI's (with a number as ``code``), but some in FastAPI's
(``{"detail": "Not Found"}``); clients see one shape either way, under the gateway's request id.
"""

from __future__ import annotations

import orjson

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
}
MAX_MESSAGE = 2000


def body(status: int, message: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": TYPES.get(status, "api_error"), "param": param, "code": code}}
    )


def from_upstream(status: int, data: bytes, path: str) -> bytes:
    """An engine's error answer, in OpenAI's shape whatever shape it came in."""
    message: str = ""
    param: str | None = None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error, detail = parsed.get("error"), parsed.get("detail")
        if isinstance(error, dict):
            text, where = error.get("message"), error.get("param")
            message = text if isinstance(text, str) else ""
            param = where if isinstance(where, str) else None
        elif isinstance(error, str):
            message = error
        elif isinstance(detail, str):
            message = detail
    if status == 404 and message in ("", "Not Found"):
        # FastAPI's answer for a path the engine does not serve: the model cannot do this kind of call.
        return body(404, f"This model does not serve {path}.", "unsupported_endpoint", "model")
    if not message:
        message = f"The model's engine answered {status}."
    return body(status, message[:MAX_MESSAGE], "upstream_error", param)


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
        # Billed as the engine's work (an upstream timeout, an answer too large): the client is told not to
        # send it again (`x-should-retry: false`), which the openai SDKs would twice by default, billed each time.
        self.billed = False


def no_such_model(name) -> GatewayError:
    shown = name if isinstance(name, str) and len(name) <= 256 else "…"
    return GatewayError(
        404,
        f"The model `{shown}` does not exist or you do not have access to it.",
        "model_not_found",
        param="model",
    )


class PayloadError(ValueError):
    """A body the gateway will not forward: a 400 naming ``param`` (payloads.py, schemas.py)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

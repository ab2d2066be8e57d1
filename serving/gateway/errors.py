"""Errors in OpenAI's JSON shape, so the official SDKs raise the right exception classes."""

from __future__ import annotations

import orjson

TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "api_error",
    504: "api_error",
}


def body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": TYPES.get(status, "api_error"), "param": param,
                                   "code": code}})

"""``/v1/rerank`` and ``/v1/score``: a cross-encoder scores (query, document) pairs; vLLM serves both routes.

Contract: as payloads.py for the other routes: every field on the route's allow-list, type-checked and
bounded (documents per call ``PORTFOLIO_GATEWAY_MAX_DOCUMENTS``, characters per text
``PORTFOLIO_GATEWAY_MAX_DOCUMENT_CHARS``); texts only (vLLM also takes multimodal content parts here, which
fetch URLs: refused). Each pair is one prompt of at most its query's and document's bytes plus special
tokens, reserved in full and metered by the engine's count of prompt tokens; nothing is generated.
"""

from __future__ import annotations

from django.conf import settings

from serving.gateway import payloads
from serving.gateway.payloads import INT32, PayloadError, Shape

_COMMON = {
    "model": payloads.text_check(256),
    "user": payloads.text_check(256),
    "truncate_prompt_tokens": payloads.integer_check(-1, INT32),
    "use_activation": payloads.boolean_check,
}
RERANK = {**_COMMON, "query": None, "documents": None, "top_n": None}
SCORE = {**_COMMON, "text_1": None, "text_2": None}
FIELDS = {"rerank": RERANK, "score": SCORE}


def check(kind: str, payload: dict) -> Shape:
    """Check a rerank or score body; its shape (one prompt per pair, nothing generated)."""
    fields = FIELDS[kind]
    for name, value in payload.items():
        if name not in fields:
            raise PayloadError(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
        checker = fields[name]
        if checker is not None:
            checker(name, value)
    most = settings.GATEWAY_MAX_DOCUMENTS
    if kind == "rerank":
        query = _text("query", payload.get("query"))
        documents = _texts("documents", payload.get("documents"), most)
        top_n = payload.get("top_n")
        if top_n is not None:
            if type(top_n) is not int:
                raise PayloadError("`top_n` must be an integer.", "top_n", "invalid_type")
            if not 0 <= top_n <= most:
                raise PayloadError(f"`top_n` must be from 0 to {most}; got {top_n}.", "top_n")
        pairs = [(query, document) for document in documents]
    else:
        first = payload.get("text_1")
        second = _texts("text_2", payload.get("text_2"), most)
        if isinstance(first, list):
            firsts = _texts("text_1", first, most)
            if len(firsts) not in (1, len(second)):
                raise PayloadError(
                    "`text_1` must hold one text, or as many as `text_2` (one pair each).", "text_1"
                )
            firsts = firsts * len(second) if len(firsts) == 1 else firsts
        else:
            firsts = [_text("text_1", first)] * len(second)
        pairs = list(zip(firsts, second, strict=True))
    return Shape(
        prompts=tuple(_bound(a) + _bound(b) + payloads.SPECIAL_TOKENS for a, b in pairs),
        choices=0,
        per_choice=0,
    )


def _bound(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _text(name: str, value) -> str:
    if value is None:
        raise PayloadError(f"Missing required parameter: `{name}`.", name, "missing_required_parameter")
    if type(value) is not str:
        raise PayloadError(f"`{name}` must be a string.", name, "invalid_type")
    most = settings.GATEWAY_MAX_DOCUMENT_CHARS
    if len(value) > most:
        raise PayloadError(f"`{name}` may have at most {most} characters.", name, "text_too_long")
    return value


def _texts(name: str, value, most: int) -> list[str]:
    """A string or a non-empty array of at most ``most`` strings, as a list."""
    if isinstance(value, str) or value is None:
        return [_text(name, value)]
    if not isinstance(value, list) or not value:
        raise PayloadError(
            f"`{name}` must be a string or a non-empty array of strings.", name, "invalid_type"
        )
    if len(value) > most:
        raise PayloadError(f"`{name}` may have at most {most} items.", name, "too_many_documents")
    return [_text(f"{name}[{i}]", item) for i, item in enumerate(value)]

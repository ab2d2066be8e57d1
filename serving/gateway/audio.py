"""``/v1/audio/transcriptions`` and ``/v1/audio/translations``: a WAV upload to a speech model (vLLM serves
both OpenAI routes for Whisper), with the same keys, scopes, limits, budgets and usage events as chat.

Contract: the body is a multipart form read whole up to ``PORTFOLIO_GATEWAY_MAX_AUDIO_BYTES`` (uploads.py),
with one WAV file whose duration, read from its header, is at most ``PORTFOLIO_GATEWAY_MAX_AUDIO_SECONDS``,
and text fields on the route's allow-list (``model`` required). Admission reserves the upload's price
(seconds times the price book's ``audio_second`` of the costliest hop) and no tokens; the call is metered
in audio milliseconds on its usage event and priced per second when it settles. The engine gets the form
rebuilt from the checked fields, the model renamed to the route's, never the client's own bytes around
the file. Streaming is not offered (``stream`` is not on the allow-list). PostgreSQL is never touched.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from django.conf import settings

from serving.gateway import access, admission, authentication, intake, keystate, uploads
from serving.gateway.errors import GatewayError
from serving.gateway.events import Outcome, usage_event
from serving.gateway.payloads import PayloadError, Shape, number_check, text_check
from serving.gateway.relay import read_body
from serving.gateway.routing import EndpointInfo

ROUTES = {"/v1/audio/transcriptions": "transcription", "/v1/audio/translations": "translation"}
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")


def _language(name: str, value: str) -> None:
    if not _LANGUAGE.fullmatch(value):
        raise PayloadError(f"`{name}` must be an ISO-639-1 language code such as `en`.", name)


def _format(name: str, value: str) -> None:
    if value not in FORMATS:
        raise PayloadError(f"`{name}` must be one of {', '.join(FORMATS)}.", name)


def _temperature(name: str, value: str) -> None:
    try:
        number = float(value)
    except ValueError:
        raise PayloadError(f"`{name}` must be a number.", name, "invalid_type") from None
    if not math.isfinite(number):
        raise PayloadError(f"`{name}` must be a finite number.", name)
    number_check(0, 1)(name, number)


def _granularities(name: str, value: list[str]) -> None:
    if len(value) > 2 or any(item not in ("word", "segment") for item in value):
        raise PayloadError(f"`{name}` may hold `word` and `segment`.", name)


_COMMON: dict[str, Callable] = {
    "model": text_check(256, 1),
    "language": _language,
    "prompt": text_check(4096),
    "response_format": _format,
    "temperature": _temperature,
}
FIELDS: dict[str, dict[str, Callable]] = {
    "transcription": {**_COMMON, "timestamp_granularities[]": _granularities},
    "translation": _COMMON,
}
NO_TOKENS = Shape(prompts=(), choices=0, per_choice=0)


def check_fields(kind: str, fields: dict) -> None:
    allowed = FIELDS[kind]
    for name, value in fields.items():
        checker = allowed.get(name)
        if checker is None:
            raise PayloadError(
                f"Unrecognized request argument supplied: {name[:64]}", name[:64], "unknown_parameter"
            )
        if isinstance(value, list) != name.endswith("[]"):
            raise PayloadError(f"`{name}` is given in the wrong form.", name, "invalid_type")
        checker(name, value)
    if not fields.get("model"):
        raise PayloadError("You must provide a model parameter.", "model", "missing_required_parameter")


def read_upload(kind: str, headers: dict, body: bytes) -> tuple[uploads.Upload, int]:
    """The checked form and the audio's duration in milliseconds."""
    form = uploads.parse_form(headers.get(b"content-type", b""), body)
    check_fields(kind, form.fields)
    duration = uploads.wav_duration_ms(form.content)
    most = settings.GATEWAY_MAX_AUDIO_SECONDS
    if duration > most * 1000:
        raise PayloadError(
            f"The audio is {duration / 1000:.1f} s long; at most {most} s are taken per call.",
            "file",
            "audio_too_long",
        )
    if duration == 0:
        raise PayloadError("The audio holds no samples.", "file", "invalid_audio")
    return form, duration


def audio_cost(hop: EndpointInfo, audio_ms: int) -> int:
    """The most an upload of ``audio_ms`` can cost on ``hop``, in micro-units (up, as a reservation)."""
    return math.ceil(hop.audio_micros_per_second * audio_ms / 1000)


async def serve(gateway, scope, receive, send, headers, request_id: str, event_id: str, *, kind: str) -> None:
    """One audio call, from the key's check to its usage event (as Gateway._proxy does for JSON calls)."""
    started = time.perf_counter()
    assert gateway.limiter is not None, "set by start()"
    key, _ = await authentication.authenticate(gateway.keys, headers, scope)
    try:
        body = await read_body(receive, settings.GATEWAY_MAX_AUDIO_BYTES)
        try:
            form, duration = read_upload(kind, headers, body)
        except PayloadError as exc:
            raise GatewayError(400, exc.message, exc.code, param=exc.param) from None
        name = form.fields["model"]
        first = access.endpoint(gateway.snapshot, key, name)
        intake.check_serves(kind, first, name)
        chain = access.chain(
            gateway.snapshot, key, first, 0, chat=False, cut_fallbacks=gateway._cut_fallbacks
        )
        money = max(audio_cost(hop, duration) for hop in chain)
        outcome = Outcome(endpoint=first.name, kind=kind, shape=NO_TOKENS, event_id=event_id, first=first)
        outcome.audio_ms = duration
        verdict = await gateway.limiter.admit(
            key,
            tokens=0,
            money_micros=money,
            revoked_set=keystate.REVOKED_SET,
            ledger=gateway.ledger,
            lost_event=usage_event(key, outcome, 0.0, 0, lost=True),
            caps=admission.spend_caps(
                gateway.snapshot, key, NO_TOKENS, chain, cost_of=lambda hop: audio_cost(hop, duration)
            ),
        )
        if not verdict.ok:
            if verdict.reason == "revoked":
                gateway.keys.evict(key.key_id)
            refused = admission.refusal(key, verdict, 0, money, playground=False)
            if refused.param == "max_tokens":  # what the client can change here is the audio, not max_tokens
                refused.message = refused.message.split(": lower max_tokens")[0] + ": send shorter audio."
                refused.param = "file"
            raise refused
    except GatewayError as exc:
        exc.team = key.team
        raise
    fields, content = dict(form.fields), form.content

    def encode(upstream: dict) -> tuple[bytes, str]:
        return uploads.encode_form(upstream, "audio.wav", content)

    try:
        await gateway._dispatch(
            receive,
            send,
            request_id,
            chain,
            first.name,
            fields,
            outcome,
            started,
            (key.key_id, headers),
            encode=encode,
        )
    except GatewayError as exc:
        outcome.status, outcome.error = exc.status, exc.code
        exc.team, exc.metered = key.team, True
        raise
    except Exception:
        outcome.status, outcome.error = 500, "internal"
        error = GatewayError(500, f"Internal gateway error (request {request_id}).", "internal")
        error.team, error.metered = key.team, True
        raise error from None
    finally:
        if outcome.status != 200:
            outcome.audio_ms = 0  # billed only when transcribed
        await gateway._settle(key, outcome.answered or first, verdict.reservation, outcome, started)

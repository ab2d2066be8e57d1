"""``/v1/audio/transcriptions`` and ``/v1/audio/translations``: a WAV upload to a speech model (vLLM serves
both OpenAI routes for Whisper), with the same keys, scopes, limits, budgets and usage events as chat.

Contract: the body is a multipart form read whole up to ``PORTFOLIO_GATEWAY_MAX_AUDIO_BYTES`` (uploads.py),
with one WAV file whose duration, read from its header, is at most ``PORTFOLIO_GATEWAY_MAX_AUDIO_SECONDS``,
and text fields on the route's allow-list (``model`` required). Admission reserves, as for chat, the worst
case of the costliest hop: the audio's seconds as tokens (``audio_tokens``, 50 a second) and the most
tokens the decoder can produce for that duration (``reservation``: its limit a chunk, or the client's
``max_completion_tokens``, which the engine then stops each chunk at), and the most money (the seconds at
the price book's ``audio_second``, plus the decoder's tokens at its token prices), so that the key's
tokens-per-minute limit, token and money budgets and the team's and department's hard limits refuse an
upload that could pass them. The call settles to what was metered: audio milliseconds on its usage event,
priced per second and counted against the token limits as ``audio_tokens``, and whatever tokens the
engine reports (vLLM reports none for a transcription). The engine gets the form
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
from serving.gateway.payloads import (
    SPECIAL_TOKENS,
    PayloadError,
    Shape,
    audio_tokens,
    integer_check,
    number_check,
    text_check,
    worst_case,
)
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


# The most a client may ask for: far above any speech decoder's limit (Whisper's is 448), which bounds it.
MOST_COMPLETION_TOKENS = 65_536


def _completion_tokens(name: str, value: str) -> None:
    """``max_completion_tokens``: each chunk's transcript stops there (vLLM takes it), and the call reserves
    that many tokens a chunk instead of the decoder's whole limit."""
    try:
        number = int(value)
    except ValueError:
        raise PayloadError(f"`{name}` must be an integer.", name, "invalid_type") from None
    integer_check(1, MOST_COMPLETION_TOKENS)(name, number)


def _granularities(name: str, value: list[str]) -> None:
    if len(value) > 2 or any(item not in ("word", "segment") for item in value):
        raise PayloadError(f"`{name}` may hold `word` and `segment`.", name)


_COMMON: dict[str, Callable] = {
    "model": text_check(256, 1),
    "language": _language,
    "prompt": text_check(4096),
    "response_format": _format,
    "temperature": _temperature,
    "max_completion_tokens": _completion_tokens,
}
FIELDS: dict[str, dict[str, Callable]] = {
    "transcription": {**_COMMON, "timestamp_granularities[]": _granularities},
    "translation": _COMMON,
}
NO_TOKENS = Shape(prompts=(), choices=0, per_choice=0)  # the outcome's shape: no stream, no choices to count

# How vLLM 0.32 decodes an upload (entrypoints/speech_to_text/base/serving.py, multimodal/audio.py:
# split_audio; Whisper's feature extractor sets the 30 s): audio up to ``max_audio_clip_s`` (30 s) is one
# chunk; longer audio is cut at the quietest point of the last ``overlap_chunk_second`` (1 s) of each 30 s
# window, so every chunk but the last is at least 29 s long. Each chunk is a sequence of its own: a decoder
# prompt (special tokens and the request's ``prompt``) and a transcript that stops when both reach
# ``max_model_len`` (Whisper's decoder limit, its config's ``max_target_positions``: 448).
CLIP_MS = 30_000
SHORTEST_CUT_MS = 29_000


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
    """What the seconds of an upload of ``audio_ms`` cost on ``hop``, in micro-units (up, as a reservation)."""
    return math.ceil(hop.audio_micros_per_second * audio_ms / 1000)


def chunks(audio_ms: int) -> int:
    """The most sequences the engine decodes for ``audio_ms`` of audio (n chunks need over (n-1) x 29 s)."""
    return 1 if audio_ms <= CLIP_MS else audio_ms // SHORTEST_CUT_MS + 1


def reservation(
    hop: EndpointInfo, audio_ms: int, prompt: str = "", most_tokens: int | None = None
) -> tuple[int, int]:
    """The most tokens, and money in micro-units, an upload of ``audio_ms`` with this ``prompt`` field can be
    billed on ``hop``: per chunk, a decoder prompt (the field's bytes and the special tokens around it) and a
    transcript of at most ``most_tokens`` (``max_completion_tokens``) that together stop at the decoder's
    limit, at the hop's token prices; plus the seconds, as ``audio_tokens`` and at the hop's audio price."""
    limit = hop.decoder_len or hop.max_model_len
    prompt_bound = len(prompt.encode("utf-8", "surrogatepass")) + SPECIAL_TOKENS
    shape = Shape(prompts=(prompt_bound,) * chunks(audio_ms), choices=1, per_choice=most_tokens)
    tokens, money = worst_case(shape, limit, hop.input_micros_per_token, hop.output_micros_per_token)
    return tokens + audio_tokens(audio_ms), money + audio_cost(hop, audio_ms)


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
        prompt = form.fields.get("prompt") or ""
        asked = form.fields.get("max_completion_tokens")
        assert isinstance(prompt, str) and not isinstance(asked, list), "checked: not list fields"
        most = int(asked) if asked else None
        # Reserve for the costliest hop the upload may take (decoder limits and prices differ).
        worst = {hop.name: reservation(hop, duration, prompt, most) for hop in chain}
        tokens = max(t for t, _ in worst.values())
        money = max(m for _, m in worst.values())
        outcome = Outcome(endpoint=first.name, kind=kind, shape=NO_TOKENS, event_id=event_id, first=first)
        verdict = await gateway.limiter.admit(
            key,
            tokens=tokens,
            money_micros=money,
            revoked_set=keystate.REVOKED_SET,
            ledger=gateway.ledger,
            lost_event=usage_event(key, outcome, 0.0, 0, lost=True),
            caps=admission.spend_caps(
                gateway.snapshot, key, NO_TOKENS, chain, cost_of=lambda hop: worst[hop.name][1]
            ),
        )
        if not verdict.ok:
            if verdict.reason == "revoked":
                gateway.keys.evict(key.key_id)
            # What the client can change here is the audio, not max_tokens.
            raise admission.refusal(
                key, verdict, tokens, money, playground=False, remedy=admission.SHORTER_AUDIO
            )
        # After admission: the in-flight ledger's event (a process lost mid-call) bills nothing, as for text.
        outcome.audio_ms = duration
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
        if outcome.status != 200 and not outcome.worst_case:
            # Billed when transcribed, or when an engine had the upload and did not answer in time: it may
            # have decoded all of it (the text is billed its worst case, the seconds are known).
            outcome.audio_ms = 0
        await gateway._settle(key, outcome.answered or first, verdict.reservation, outcome, started)

"""/v1/audio/transcriptions and /v1/audio/translations through a real gateway process, with the official
openai SDK, against the stand-in engine (tests/gateway/media_engine.py: no Whisper weights here): keys,
scopes, limits and budgets as for chat, metering in audio seconds priced from the price book, and hostile
uploads refused in OpenAI's error shape before the engine sees them."""

from __future__ import annotations

import struct
import threading
import time
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from serving.gateway import inflight, keystate
from serving.gateway.models import UsageEvent
from tests.gateway.conftest import flush_settled, same_minute, wait_for_model, wait_settled
from tests.gateway.media import client, error_of, media_gateway, price_audio, sine_wav, speech_wav

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["media_gateway"]


@pytest.fixture
def whisper(media_gateway, stack):
    """A speech endpoint priced 0.01 per second of audio, an engine behind it, and a key of its team."""
    dep, engines = stack["deployment"]("whisper-dep", task="speech", media=True)
    endpoint = stack["endpoint"]("whisper", dep)
    price_audio(endpoint, "0.01")
    secret = stack["key"]()
    wait_for_model(media_gateway, secret, "whisper")
    return {"base": media_gateway, "secret": secret, "engine": engines[0], "stack": stack}


def post(whisper, files, data, path="/v1/audio/transcriptions", secret=None) -> httpx.Response:
    return httpx.post(
        f"{whisper['base']}{path}",
        files=files,
        data=data,
        headers={"Authorization": f"Bearer {secret or whisper['secret']}"},
        timeout=20,
    )


# --- Happy paths ------------------------------------------------------------------------------------
def test_a_transcription_through_the_sdk_is_forwarded_whole_and_metered_in_audio_seconds(whisper, tmp_path):
    audio = speech_wav("The invoice was paid twice.", tmp_path)
    path = tmp_path / "call.wav"
    path.write_bytes(audio)
    with path.open("rb") as file:
        answer = client(whisper["base"], whisper["secret"]).audio.transcriptions.create(
            model="whisper", file=file, language="en", temperature=0.0
        )
    assert answer.text == f"heard {len(audio)} bytes"
    sent = whisper["engine"].requests[-1]
    assert sent["path"] == "/v1/audio/transcriptions" and sent["file"] == audio
    assert sent["fields"]["model"] == ["whisper-dep"], "the engine gets its own name for the model"
    assert sent["fields"]["language"] == ["en"]
    flush_settled()
    event = UsageEvent.objects.get()
    (channels, rate), bits = struct.unpack_from("<HI", audio, 22), struct.unpack_from("<H", audio, 34)[0]
    data_bytes = len(audio) - 44
    expected_ms = -(-data_bytes // (channels * bits // 8) * 1000 // rate)
    assert (event.kind, event.status, event.audio_ms) == ("transcription", 200, expected_ms)
    assert event.cost == (Decimal(expected_ms) / 100_000).quantize(Decimal("0.000001"))  # 0.01 a second


def test_a_translation_through_the_sdk_answers_text_when_asked(whisper):
    answer = client(whisper["base"], whisper["secret"]).audio.translations.create(
        model="whisper", file=("clip.wav", sine_wav(1.0), "audio/wav"), response_format="text"
    )
    assert str(answer).strip() == f"heard {len(sine_wav(1.0))} bytes"
    assert whisper["engine"].requests[-1]["path"] == "/v1/audio/translations"
    flush_settled()
    assert UsageEvent.objects.get().audio_ms == 1000


# --- Keys and scopes ------------------------------------------------------------------------------------
def test_audio_calls_need_a_key_that_may_call_the_endpoint(whisper, other_team):
    stack = whisper["stack"]
    dep, _ = stack["deployment"]("elsewhere-dep")
    stack["endpoint"]("somewhere-else", dep)
    other = stack["key"](owner=other_team)
    scoped = stack["key"](scopes=["somewhere-else"])
    files = {"file": ("a.wav", sine_wav(0.5), "audio/wav")}
    assert post(whisper, files, {"model": "whisper"}, secret="slm_nope_nope").status_code == 401
    for secret in (other, scoped):
        response = post(whisper, files, {"model": "whisper"}, secret=secret)
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert whisper["engine"].requests == []


def test_a_chat_model_is_not_asked_to_transcribe_and_a_speech_model_not_to_chat(whisper):
    stack = whisper["stack"]
    dep, engines = stack["deployment"]("chatty-dep")
    stack["endpoint"]("chatty", dep)
    wait_for_model(whisper["base"], whisper["secret"], "chatty")
    response = post(whisper, {"file": ("a.wav", sine_wav(0.5), "audio/wav")}, {"model": "chatty"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_endpoint"
    with pytest.raises(openai.BadRequestError) as excinfo:
        client(whisper["base"], whisper["secret"]).chat.completions.create(
            model="whisper", messages=[{"role": "user", "content": "hi"}]
        )
    assert "/v1/audio/transcriptions" in error_of(excinfo)["message"]
    assert engines[0].requests == [] and whisper["engine"].requests == []


# --- Limits and budgets ---------------------------------------------------------------------------------
def test_the_requests_per_minute_limit_counts_audio_calls(whisper):
    secret = whisper["stack"]["key"](rpm_limit=1)
    files = {"file": ("a.wav", sine_wav(0.5), "audio/wav")}
    same_minute()
    assert post(whisper, files, {"model": "whisper"}, secret=secret).status_code == 200
    refused = post(whisper, files, {"model": "whisper"}, secret=secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(whisper["engine"].requests) == 1


def test_an_upload_that_could_pass_the_keys_budget_is_refused_before_the_engine(whisper):
    secret = whisper["stack"]["key"](monthly_budget=Decimal("0.03"))  # 3 s at 0.01 a second
    files = {"file": ("a.wav", sine_wav(4.0), "audio/wav")}
    refused = post(whisper, files, {"model": "whisper"}, secret=secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert (
        refused.json()["error"]["param"] == "file" and "shorter audio" in refused.json()["error"]["message"]
    )
    assert whisper["engine"].requests == []
    short = {"file": ("a.wav", sine_wav(2.0), "audio/wav")}
    assert post(whisper, short, {"model": "whisper"}, secret=secret).status_code == 200
    flush_settled()
    assert UsageEvent.objects.get().cost == Decimal("0.02")


def test_a_key_whose_tokens_per_minute_cannot_hold_the_decoders_worst_case_is_refused_a_transcription(
    whisper,
):
    # No Whisper config here: the decoder's limit per 30 s chunk is the context, 512 tokens; the 2 s
    # themselves count as 100 tokens (50 a second).
    files = {"file": ("a.wav", sine_wav(2.0), "audio/wav")}
    tight = whisper["stack"]["key"](tpm_limit=600)
    refused = post(whisper, files, {"model": "whisper"}, secret=tight)
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "rate_limit_exceeded", refused.text
    assert (
        error["param"] == "file" and "612 tokens" in error["message"] and "shorter audio" in error["message"]
    )
    assert whisper["engine"].requests == []


def test_the_seconds_of_each_transcription_count_against_the_tokens_per_minute(whisper):
    # The engine reports a duration and no tokens: each call settles to its 2 s as 100 tokens, so a key of
    # 800 a minute holds two worst cases of 612 one after the other, and not a third. Each call is answered
    # before it settles: the next one is sent once it has, all within one clock minute.
    files = {"file": ("a.wav", sine_wav(2.0), "audio/wav")}
    secret = whisper["stack"]["key"](tpm_limit=800)
    same_minute()
    for _ in range(2):
        assert post(whisper, files, {"model": "whisper"}, secret=secret).status_code == 200
        wait_settled()
    refused = post(whisper, files, {"model": "whisper"}, secret=secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded", (
        refused.text
    )
    assert len(whisper["engine"].requests) == 2
    flush_settled()
    assert [(e.input_tokens, e.output_tokens, e.audio_ms) for e in UsageEvent.objects.filter(status=200)] == [
        (0, 0, 2000),
        (0, 0, 2000),
    ], "the usage rows keep what the engine reported: the seconds are billed as seconds"


def test_the_ledgers_event_for_a_transcription_lost_mid_call_bills_no_seconds(whisper):
    """What the flusher writes if the gateway dies during the call (the in-flight ledger's event) bills
    nothing, as for a text call: the seconds are billed only when transcribed."""
    stack = whisper["stack"]
    dep, _ = stack["deployment"]("slow-whisper-dep", task="speech", media=True, delay=2.0)
    price_audio(stack["endpoint"]("slow-whisper", dep), "0.01")
    wait_for_model(whisper["base"], whisper["secret"], "slow-whisper")
    files = {"file": ("a.wav", sine_wav(2.0), "audio/wav")}
    answers: list[httpx.Response] = []
    call = threading.Thread(target=lambda: answers.append(post(whisper, files, {"model": "slow-whisper"})))
    call.start()
    redis, found = keystate.client(), []
    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:
        for ledger in redis.scan_iter(inflight.ledger_key("*")):  # the set of processes may be flushed
            found += redis.hvals(ledger)
        time.sleep(0.02)
    call.join(20)
    assert answers[0].status_code == 200, answers[0].text
    assert found, "the call was in its gateway's ledger while the engine worked"
    lost = orjson.loads(found[0])["event"]
    assert (lost["endpoint"], lost["audio_ms"], lost["cost_micros"]) == ("slow-whisper", 0, 0)


def test_an_upload_an_engine_had_and_did_not_transcribe_in_time_is_billed_its_seconds(whisper):
    """As for text: a timeout must not make the engine's work free and repeatable. The seconds are known."""
    stack = whisper["stack"]
    dep, engines = stack["deployment"]("sleepy-whisper-dep", task="speech", media=True, delay=6.0)
    price_audio(stack["endpoint"]("sleepy-whisper", dep), "0.01")
    wait_for_model(whisper["base"], whisper["secret"], "sleepy-whisper")
    response = post(whisper, {"file": ("a.wav", sine_wav(2.0), "audio/wav")}, {"model": "sleepy-whisper"})
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout", (
        response.text
    )
    assert len(engines[0].requests) == 1
    flush_settled()
    event = UsageEvent.objects.get()
    assert (event.status, event.error, event.audio_ms) == (504, "upstream_timeout", 2000)
    assert event.cost == Decimal("0.02")


def test_a_key_too_tight_for_the_decoders_limit_transcribes_by_capping_the_transcript(whisper):
    # A 2 s clip (100 tokens) is one chunk: its decoder prompt (8 special tokens) and, without a cap, up to
    # the limit of 512 tokens; with max_completion_tokens 40, 100 + 8 + 40 tokens, which fit a key of 150.
    files = {"file": ("a.wav", sine_wav(2.0), "audio/wav")}
    tight = whisper["stack"]["key"](tpm_limit=150)
    refused = post(whisper, files, {"model": "whisper"}, secret=tight)
    assert refused.status_code == 429 and "max_completion_tokens" in refused.json()["error"]["message"]
    capped = post(whisper, files, {"model": "whisper", "max_completion_tokens": "40"}, secret=tight)
    assert capped.status_code == 200, capped.text
    assert whisper["engine"].requests[-1]["fields"]["max_completion_tokens"] == ["40"], (
        "the engine stops there"
    )
    over = post(whisper, files, {"model": "whisper", "max_completion_tokens": "93"}, secret=tight)
    assert over.status_code == 429 and "up to 201 tokens" in over.json()["error"]["message"], over.text
    assert len(whisper["engine"].requests) == 1


def test_a_key_whose_token_budget_cannot_hold_the_decoders_worst_case_is_refused_a_translation(whisper):
    secret = whisper["stack"]["key"](monthly_token_budget=300)
    refused = post(
        whisper,
        {"file": ("a.wav", sine_wav(1.0), "audio/wav")},
        {"model": "whisper"},
        "/v1/audio/translations",
        secret=secret,
    )
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "insufficient_quota", refused.text
    assert error["param"] == "file" and "up to 562 tokens" in error["message"]  # 1 s: 50, and the 512
    assert whisper["engine"].requests == []


def test_the_money_reserved_for_an_upload_covers_its_tokens_price_as_well_as_its_seconds(whisper):
    stack = whisper["stack"]
    dep, _ = stack["deployment"]("priced-dep", task="speech", media=True)
    price_audio(stack["endpoint"]("priced-whisper", dep), "0.01", per_million="30")  # 30 micro-units a token
    secret = stack["key"](monthly_budget=Decimal("0.03"))
    wait_for_model(whisper["base"], secret, "priced-whisper")
    # 2 s cost 0.02 and fit the budget; their transcript could cost 512 tokens at 30 micro-units more.
    two_seconds = {"file": ("a.wav", sine_wav(2.0), "audio/wav")}
    refused = post(whisper, two_seconds, {"model": "priced-whisper"}, secret=secret)
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "insufficient_quota", refused.text
    assert "0.03536" in error["message"] and error["param"] == "file"
    one_second = {"file": ("a.wav", sine_wav(1.0), "audio/wav")}
    assert post(whisper, one_second, {"model": "priced-whisper"}, secret=secret).status_code == 200
    flush_settled()
    assert UsageEvent.objects.get().cost == Decimal("0.01"), "billed for what was metered: a second"


# --- Hostile uploads ------------------------------------------------------------------------------------
def _wav_claiming(rate: int, byte_rate: int, block: int = 2) -> bytes:
    wav = bytearray(sine_wav(1.0))
    struct.pack_into("<IIH", wav, 24, rate, byte_rate, block)
    return bytes(wav)


def _truncated_header_claiming_an_hour() -> bytes:
    wav = bytearray(sine_wav(0.5))
    struct.pack_into("<I", wav, 40, 16000 * 2 * 3600)  # the data chunk claims an hour; half a second came
    return bytes(wav)


HOSTILE = [
    ("too long", {"file": ("a.wav", sine_wav(6.0), "audio/wav")}, {"model": "whisper"}, 400, "audio_too_long"),
    ("too big", {"file": ("a.wav", b"RIFF" + b"\0" * 450_000, "audio/wav")}, {"model": "whisper"}, 413,
     "request_too_large"),
    ("no model", {"file": ("a.wav", sine_wav(0.5), "audio/wav")}, {}, 400, "missing_required_parameter"),
    ("no file", None, {"model": "whisper"}, 400, "invalid_content_type"),
    ("two files", [("file", ("a.wav", sine_wav(0.2), "audio/wav")), ("file", ("b.wav", sine_wav(0.2), "audio/wav"))],
     {"model": "whisper"}, 400, "invalid_multipart"),
    ("another file field", {"file": ("a.wav", sine_wav(0.2), "audio/wav"), "extra": ("x", b"x", "a/b")},
     {"model": "whisper"}, 400, "invalid_multipart"),
    ("mp3", {"file": ("a.mp3", b"ID3\x04" + b"\0" * 500, "audio/mpeg")}, {"model": "whisper"}, 400, "invalid_audio"),
    ("a rate that lies", {"file": ("a.wav", _wav_claiming(16000, 16000 * 2 * 1000), "audio/wav")},
     {"model": "whisper"}, 400, "invalid_audio"),
    ("a tiny rate", {"file": ("a.wav", _wav_claiming(1, 2), "audio/wav")}, {"model": "whisper"}, 400, "invalid_audio"),
    ("streaming", {"file": ("a.wav", sine_wav(0.5), "audio/wav")}, {"model": "whisper", "stream": "true"}, 400,
     "unknown_parameter"),
    ("negative temperature", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "temperature": "-1"}, 400, "invalid_value"),
    ("huge temperature", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "temperature": "1e309"}, 400, "invalid_value"),
    ("NaN temperature", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "temperature": "nan"}, 400, "invalid_value"),
    ("a bad format", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "response_format": "exe"}, 400, "invalid_value"),
    ("a long prompt", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "prompt": "x" * 5000}, 400, "invalid_value"),
    ("no transcript", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "max_completion_tokens": "0"}, 400, "invalid_value"),
    ("a huge transcript", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "max_completion_tokens": "9" * 30}, 400, "invalid_value"),
    ("a transcript of words", {"file": ("a.wav", sine_wav(0.5), "audio/wav")},
     {"model": "whisper", "max_completion_tokens": "ten"}, 400, "invalid_type"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("files", "data", "status", "code"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_hostile_uploads_are_refused_in_openais_shape_before_the_engine(whisper, files, data, status, code):
    response = post(whisper, files, data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    assert whisper["engine"].requests == []


def test_a_header_that_claims_an_hour_is_billed_for_what_was_sent(whisper):
    response = post(
        whisper, {"file": ("a.wav", _truncated_header_claiming_an_hour(), "audio/wav")}, {"model": "whisper"}
    )
    assert response.status_code == 200, response.text
    flush_settled()
    assert UsageEvent.objects.get().audio_ms == 500

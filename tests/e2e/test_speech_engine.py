"""/v1/audio/transcriptions and /v1/audio/translations with the official openai SDK, through a real gateway,
to a real vLLM CPU engine serving a tiny random Whisper (tests/e2e/speech_model.py): the engine decodes the
WAV the gateway re-sends, and the usage event carries the audio's seconds from its header, priced from the
price book. The audio is real speech from Debian's espeak-ng (installed by ``make speech``)."""

from __future__ import annotations

import time
import wave
from decimal import Decimal

import openai
import pytest
from django.conf import settings

from serving.gateway import services as key_services
from serving.gateway import usage
from serving.gateway.models import UsageEvent
from tests.conftest import actor_for
from tests.e2e import direct_engine, speech_model
from tests.gateway.media import speech_wav
from tests.gateway.process import start_gateway, stop_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    python = settings.ENGINE_PYTHON["cpu"]
    model = speech_model.build(python, root / "model")
    with direct_engine.running(model, "whisper-dep", root / "engine.log", "--max-model-len", "448") as port:
        yield port


def test_a_wav_is_transcribed_and_translated_by_a_real_engine_and_metered_in_audio_seconds(
    engine, org, team, tmp_path
):
    direct_engine.route(
        team,
        task="speech",
        deployment="whisper-dep",
        endpoint="whisper",
        port=engine,
        max_model_len=448,
        audio_second="0.01",
    )
    _, secret = key_services.create_key(actor=actor_for(org["admin"]), team=team, name="e2e speech")
    gateway, base = start_gateway(tmp_path / "gateway.log")
    try:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=300)
        deadline = time.monotonic() + 30
        while "whisper" not in {m.id for m in sdk.models.list()} and time.monotonic() < deadline:
            time.sleep(0.3)
        # Real speech (Debian's espeak-ng); its length, to the millisecond, is what is metered.
        audio = tmp_path / "speech.wav"
        audio.write_bytes(speech_wav("I was charged twice for my subscription.", tmp_path))
        with wave.open(str(audio)) as spoken:
            ms = -(-spoken.getnframes() * 1000 // spoken.getframerate())
        assert 1000 < ms < 10_000
        with audio.open("rb") as file:
            heard = sdk.audio.transcriptions.create(model="whisper", file=file, language="en", temperature=0)
        assert isinstance(heard.text, str) and heard.text, "random weights: any text, but an answer"
        with audio.open("rb") as file:
            translated = sdk.audio.translations.create(model="whisper", file=file)
        assert isinstance(translated.text, str)
        time.sleep(0.5)
        usage.flush()
        events = sorted(UsageEvent.objects.all(), key=lambda e: e.kind)
        assert [(e.kind, e.status, e.audio_ms) for e in events] == [
            ("transcription", 200, ms),
            ("translation", 200, ms),
        ]
        cost = (Decimal(ms) / 1000 * Decimal("0.01")).quantize(Decimal("0.000001"))
        assert all(e.cost == cost for e in events), [e.cost for e in events]
    finally:
        stop_gateway(gateway)

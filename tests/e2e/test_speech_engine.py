"""/v1/audio/transcriptions and /v1/audio/translations with the official openai SDK, the platform's own way:
a tiny random Whisper (``manage.py make_tiny_model speech``) registered as a speech model, deployed by the
Celery node agent as a real vLLM CPU engine, behind an endpoint priced per audio second, called through a
real gateway. The engine decodes the WAV the gateway re-sends, and the usage event carries the audio's
length from its header, priced from the price book. The audio is real speech from Debian's espeak-ng
(installed by ``make speech``)."""

from __future__ import annotations

import time
import wave
from decimal import Decimal

import pytest

from portfolio.registry.choices import Family, Task
from serving.gateway import usage
from serving.gateway.models import UsageEvent
from tests.conftest import actor_for
from tests.e2e.agent import wait
from tests.e2e.platform_path import import_tiny, served
from tests.gateway.media import speech_wav

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_wav_is_transcribed_and_translated_by_a_deployed_whisper_and_metered_in_audio_seconds(
    org, team, node_agent, settings, tmp_path
):
    _, agent_log = node_agent
    version = import_tiny(
        Family.SPEECH, "tiny-whisper", actor_for(org["engineer"]), team, settings, tmp_path, task=Task.SPEECH
    )
    assert version.context_length == 448  # Whisper's decoder: the longest transcript it writes

    # Real speech (Debian's espeak-ng); its length, to the millisecond, is what is metered.
    audio = tmp_path / "speech.wav"
    audio.write_bytes(speech_wav("I was charged twice for my subscription.", tmp_path))
    with wave.open(str(audio)) as spoken:
        ms = -(-spoken.getnframes() * 1000 // spoken.getframerate())
    assert 1000 < ms < 10_000

    with served(
        org,
        team,
        version,
        "whisper",
        agent_log,
        tmp_path,
        engine_args={"max_model_len": 448},
        price={"audio_second": "0.01"},
    ) as (sdk, log):
        with audio.open("rb") as file:
            heard = sdk.audio.transcriptions.create(model="whisper", file=file, language="en", temperature=0)
        assert isinstance(heard.text, str) and heard.text, "random weights: any text, but an answer"
        with audio.open("rb") as file:  # vLLM takes the cap the gateway reserves by (a form field)
            capped = sdk.audio.transcriptions.create(
                model="whisper",
                file=file,
                language="en",
                temperature=0,
                extra_body={"max_completion_tokens": "2"},
            )
        # Greedy both times: the capped transcript is the uncapped one stopped early ("SizeSize" of a
        # "SizeSizeSize...Desc" that runs to the decoder's limit, with these random weights).
        assert capped.text and heard.text.startswith(capped.text), (capped.text, heard.text)
        assert len(capped.text) < len(heard.text), (capped.text, heard.text)
        with audio.open("rb") as file:
            translated = sdk.audio.translations.create(model="whisper", file=file)
        assert isinstance(translated.text, str)
        time.sleep(1)
        wait("the usage events", lambda: usage.flush() == 0 and UsageEvent.objects.count() == 3, 30, [log])
    events = sorted(UsageEvent.objects.all(), key=lambda e: e.kind)
    assert [(e.kind, e.endpoint, e.status, e.audio_ms) for e in events] == [
        ("transcription", "whisper", 200, ms),
        ("transcription", "whisper", 200, ms),
        ("translation", "whisper", 200, ms),
    ]
    cost = (Decimal(ms) / 1000 * Decimal("0.01")).quantize(Decimal("0.000001"))
    assert all(e.cost == cost for e in events), [e.cost for e in events]

"""Helpers for the image, audio and rerank route tests: a gateway with small limits, speech and
cross-encoder deployments on the stand-in engine, WAV files and audio prices."""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import wave
from decimal import Decimal

import openai
import pytest

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from serving.models import Endpoint
from tests.gateway.conftest import _GATEWAY_LOGS, LONG_AGO
from tests.gateway.process import start_gateway, stop_gateway

LIMITS = {
    "PORTFOLIO_GATEWAY_IMAGE_HOSTS": "images.internal,media.corp.example:8443",
    "PORTFOLIO_GATEWAY_MAX_IMAGES": "2",
    "PORTFOLIO_GATEWAY_MAX_IMAGE_BYTES": "4096",
    "PORTFOLIO_GATEWAY_IMAGE_TOKENS": "100",
    "PORTFOLIO_GATEWAY_MAX_AUDIO_BYTES": "400000",  # 12.5 s of 16 kHz mono 16-bit
    "PORTFOLIO_GATEWAY_MAX_AUDIO_SECONDS": "5",
    "PORTFOLIO_GATEWAY_MAX_DOCUMENTS": "4",
    "PORTFOLIO_GATEWAY_MAX_DOCUMENT_CHARS": "200",
}


@pytest.fixture(scope="module")
def media_gateway(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real gateway process with the small limits above; its base URL."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with django_db_blocker.unblock():
        process, base = start_gateway(log, PORTFOLIO_GATEWAY_UPSTREAM_TIMEOUT="5", **LIMITS)
    _GATEWAY_LOGS.append(log)
    yield base
    _GATEWAY_LOGS.remove(log)
    stop_gateway(process)


def client(base: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=20)


def price_audio(endpoint: Endpoint, per_second: str, per_million: str = "0") -> None:
    """Price ``endpoint``: per second of audio, and per million tokens in and out."""
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(endpoint.pk),
        subject_name=endpoint.name,
        effective_from=LONG_AGO,
        input_per_million=Decimal(per_million),
        output_per_million=Decimal(per_million),
        audio_second=Decimal(per_second),
    )


def sine_wav(seconds: float, rate: int = 16000) -> bytes:
    """A 440 Hz tone as 16-bit mono WAV: a duration exact to the sample, for the metering tests."""
    frames = int(seconds * rate)
    samples = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{frames}h", *samples))
    return buffer.getvalue()


def speech_wav(text: str, tmp_path) -> bytes:
    """Real speech, spoken by Debian's espeak-ng (``make test`` installs it: ``make speech``)."""
    assert shutil.which("espeak-ng"), "espeak-ng is missing: `make speech` installs it"
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=30)  # noqa: S603, S607
    return path.read_bytes()


def error_of(excinfo) -> dict:
    """The OpenAI-shaped error body an SDK exception carries."""
    body = excinfo.value.body
    assert set(body) >= {"message", "type", "param", "code"}, body
    return body

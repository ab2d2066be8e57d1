"""An image's bytes do not bound the pixels an engine decodes: a small file of one colour can declare
13,000 x 13,000 pixels. The gateway reads each format's width and height from its header, as decoders do,
and refuses an image over ``PORTFOLIO_GATEWAY_MAX_IMAGE_PIXELS`` before the engine sees it."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from serving.gateway import image_sizes, images
from serving.gateway.payloads import PayloadError


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0" * 8


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0" + b"\1\1\0\0\1\0\1\0\0"
    sof2 = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\1\x11\0"
    return b"\xff\xd8" + app0 + sof2 + b"\xff\xd9"


def webp(kind: bytes, width: int, height: int) -> bytes:
    if kind == b"VP8X":
        body = b"\0" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif kind == b"VP8L":
        body = b"\x2f" + ((width - 1) | (height - 1) << 14).to_bytes(4, "little")
    else:
        body = b"\0\0\0\x9d\x01\x2a" + struct.pack("<HH", width, height)
    chunk = kind + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


IMAGES = [
    ("image/png", png),
    ("image/gif", gif),
    ("image/jpeg", jpeg),
    ("image/webp", lambda w, h: webp(b"VP8X", w, h)),
    ("image/webp", lambda w, h: webp(b"VP8L", w, h)),
    ("image/webp", lambda w, h: webp(b"VP8 ", w, h)),
]
IDS = ["png", "gif", "jpeg", "webp-extended", "webp-lossless", "webp-lossy"]


def looking_at(kind: str, data: bytes) -> list[dict]:
    url = f"data:{kind};base64,{base64.b64encode(data).decode()}"
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize(("kind", "make"), IMAGES, ids=IDS)
def test_each_format_is_read_as_its_decoders_read_it(kind, make):
    assert image_sizes.dimensions(kind, make(640, 480)) == (640, 480)


@pytest.mark.parametrize(("kind", "make"), IMAGES, ids=IDS)
def test_an_image_declaring_more_pixels_than_allowed_is_refused_before_the_engine(kind, make, settings):
    settings.GATEWAY_MAX_IMAGE_PIXELS = 36_000_000
    assert images.inspect(looking_at(kind, make(6000, 6000))).number == 1
    with pytest.raises(PayloadError) as refused:
        images.inspect(looking_at(kind, make(13_000, 13_000)))
    assert refused.value.code == "image_too_large" and "13000 x 13000 pixels" in str(refused.value)

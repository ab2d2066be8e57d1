"""An image's bytes do not bound the pixels an engine decodes: a small file of one colour can declare
13,000 x 13,000 pixels. The gateway reads each format's width and height from its header, as decoders do,
and refuses an image over ``PORTFOLIO_GATEWAY_MAX_IMAGE_PIXELS`` before the engine sees it."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image, ImageCms, PngImagePlugin

from serving.gateway import image_sizes, images
from serving.gateway.payloads import PayloadError


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(width: int, height: int) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def png(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + ihdr(width, height) + chunk(b"IEND", b"")


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


# Crafted headers that Pillow reads as far more pixels than a stricter reading finds.
def sof(width: int, height: int) -> bytes:
    return b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\1\x11\0"


APP0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0" + b"\1\1\0\0\1\0\1\0\0"
SCREEN_1X1 = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)


def frame(width: int, height: int) -> bytes:
    """A GIF image descriptor at (0, 0), then a minimal LZW stream."""
    return b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"


CRAFTED = [
    # Pillow skips a stray non-0xFF byte between segments and reads on to the frame.
    ("jpeg-stray-byte", "image/jpeg", b"\xff\xd8" + APP0 + b"\x00" + sof(12_000, 12_000) + b"\xff\xd9"),
    # Pillow keeps the last start-of-frame it reads, and allocates it before libjpeg refuses the second.
    ("jpeg-two-frames", "image/jpeg", b"\xff\xd8" + APP0 + sof(100, 100) + sof(12_000, 12_000) + b"\xff\xd9"),
    # Pillow grows a 1 x 1 logical screen to its first frame's extent.
    ("gif-frame-beyond-screen", "image/gif", SCREEN_1X1 + frame(12_000, 12_000) + b";"),
    # After an extension whose first sub-block is empty Pillow reads one more chain: here it swallows what
    # a by-the-book walk takes for a 1 x 1 frame, and the frame Pillow reads next is hidden from that walk.
    ("gif-pillow-extension-quirk", "image/gif",
     SCREEN_1X1 + b"!\xf9\x00" + b"\x0a" + frame(1, 1)[:10] + b"\x00" + frame(12_000, 12_000) + b";"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "data"), [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_a_crafted_header_is_read_at_the_size_the_engines_decoder_reads(kind, data, settings):
    settings.GATEWAY_MAX_IMAGE_PIXELS = 36_000_000
    assert image_sizes.dimensions(kind, data) == (12_000, 12_000)
    with pytest.raises(PayloadError) as refused:
        images.inspect(looking_at(kind, data))
    assert refused.value.code == "image_too_large" and "12000 x 12000 pixels" in str(refused.value)


ONE_BLACK_ROW = chunk(b"IDAT", zlib.compress(b"\0" * 9001))
CRAFTED_PNG = [
    # Pillow reads every chunk up to the image data and keeps the last header's size.
    ("two-headers", ihdr(1, 1) + ihdr(9000, 9000) + ONE_BLACK_ROW),
    ("header-after-text", ihdr(1, 1) + chunk(b"tEXt", b"k\0v") + ihdr(9000, 9000) + ONE_BLACK_ROW),
]


@pytest.mark.parametrize("chunks", [c[1] for c in CRAFTED_PNG], ids=[c[0] for c in CRAFTED_PNG])
def test_a_png_with_a_later_header_is_read_at_the_size_pillow_reads(chunks, settings):
    data = b"\x89PNG\r\n\x1a\n" + chunks + chunk(b"IEND", b"")
    assert image_sizes.dimensions("image/png", data) == Image.open(io.BytesIO(data)).size == (9000, 9000)
    settings.GATEWAY_MAX_IMAGE_PIXELS = 36_000_000
    with pytest.raises(PayloadError) as refused:
        images.inspect(looking_at("image/png", data))
    assert refused.value.code == "image_too_large" and "9000 x 9000 pixels" in str(refused.value)


def test_an_ordinary_png_with_chunks_before_its_data_is_read_as_pillow_reads_it():
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "a camera")
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    still, animated = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (640, 480)).save(still, "PNG", pnginfo=text, dpi=(72, 72), icc_profile=profile)
    frames = [Image.new("P", (320, 200), colour) for colour in (1, 2)]
    frames[0].save(animated, "PNG", save_all=True, append_images=frames[1:])
    assert all(kind in still.getvalue().split(b"IDAT")[0] for kind in (b"iCCP", b"pHYs", b"tEXt"))
    assert b"acTL" in animated.getvalue() and b"fdAT" in animated.getvalue()
    assert image_sizes.dimensions("image/png", still.getvalue()) == (640, 480)
    assert image_sizes.dimensions("image/png", animated.getvalue()) == (320, 200)


UNREADABLE = [
    ("png-without-ihdr", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
    ("png-ihdr-after-idat", "image/png", b"\x89PNG\r\n\x1a\n" + ONE_BLACK_ROW + ihdr(9, 9)),
    ("gif-without-screen", "image/gif", b"GIF89a"),
    ("jpeg-without-frame", "image/jpeg", b"\xff\xd8" + APP0 + b"\xff\xd9"),
    ("jpeg-unknown-marker", "image/jpeg", b"\xff\xd8\xff\x01" + sof(10, 10)),
    ("webp-without-header", "image/webp", b"RIFF\0\0\0\0WEBPVP8 "),
]


@pytest.mark.parametrize(("kind", "data"), [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_an_image_whose_dimensions_cannot_be_read_is_refused(kind, data):
    with pytest.raises(PayloadError) as refused:
        images.inspect(looking_at(kind, data))
    assert refused.value.code == "invalid_image" and "dimensions are unreadable" in str(refused.value)


def test_a_walk_longer_than_any_encoder_writes_is_given_up_not_followed():
    # 2 MB of one-byte GIF sub-blocks, or of bare JPEG markers: each would cost the gateway a million steps.
    gif_data = SCREEN_1X1 + b"!\xfe" + b"\x01a" * 1_000_000 + b"\x00" + frame(9, 9) + b";"
    assert image_sizes.dimensions("image/gif", gif_data) is None
    jpeg_data = b"\xff\xd8" + b"\xff\xd0" * 1_000_000 + sof(9, 9)
    assert image_sizes.dimensions("image/jpeg", jpeg_data) is None
    png_data = b"\x89PNG\r\n\x1a\n" + chunk(b"tEXt", b"") * 100_000 + ihdr(9, 9)
    assert image_sizes.dimensions("image/png", png_data) is None

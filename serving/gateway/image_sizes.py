"""An image's width and height read from its header, without decoding it: the gateway bounds the pixels a
client may make an engine decode (a 2 MB PNG of one colour can declare 13,000 x 13,000 pixels, half a GB of
RGB in the engine's process per image). Read as the decoders read them: PNG's IHDR (the first chunk),
GIF's logical screen, JPEG's first start-of-frame segment, WebP's VP8/VP8L/VP8X header. ``None`` where the
header is not one of these; such a file is left to the engine, which cannot decode it either."""

from __future__ import annotations

import struct

# Start-of-frame markers (baseline, progressive, lossless...): not DHT (C4), JPG (C8) nor DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def dimensions(declared: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image of type ``declared`` whose magic bytes were checked."""
    if declared == "image/png":
        return _png(data)
    if declared == "image/gif":
        return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None
    if declared == "image/jpeg":
        return _jpeg(data)
    if declared == "image/webp":
        return _webp(data)
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        if marker == 0xDA or length < 2:  # the image data starts before any frame: not decodable
            return None
        at += 2 + length
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None

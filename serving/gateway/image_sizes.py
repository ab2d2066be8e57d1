"""An image's width and height read from its header, without decoding it: the gateway bounds the pixels a
client may make an engine decode (a 2 MB PNG of one colour can declare 13,000 x 13,000 pixels, half a GB of
RGB in the engine's process per image). Read as the engine's decoder (Pillow) reads them, stray bytes and all:
the largest of PNG's IHDR chunks before its image data, GIF's logical screen grown to every frame's extent,
the largest of JPEG's start-of-frame segments before its scan, WebP's VP8/VP8L/VP8X header. ``None`` where no
size can be read; the caller refuses such a file. Parsing is bounded: a walk of more segments or chunks than
any encoder writes gives up (``None``) rather than spend the gateway's time on a crafted file."""

from __future__ import annotations

import re
import struct

# Start-of-frame markers whose segment Pillow reads a size from (baseline, progressive, lossless..., and DHP,
# which Pillow reads as one too): not DHT (C4), JPG (C8) nor DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE}
# Markers Pillow takes without a length: JPG (C8), RSTn, SOI, EOI, JPGn (F0-FD).
_BARE = {0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)}
# Markers Pillow skips by their length: DHT, DAC, SOS, DQT, DNL, DRI, EXP, APPn, COM.
_SKIPPED = {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xDF, *range(0xE0, 0xF0), 0xFE}
_JPEG_SEGMENTS = 1024  # a real header has a few dozen before its scan
_PNG_CHUNKS = 1024  # a real file has a few dozen before its image data
_PNG_DATA = {b"IDAT", b"fdAT", b"IEND"}  # where Pillow stops reading a header
_FF_RUN = re.compile(rb"\xff+")
_GIF_BLOCK = re.compile(rb"[!,;]")  # Pillow skips any other byte between a GIF's blocks


def dimensions(declared: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image of type ``declared`` whose magic bytes were checked."""
    if declared == "image/png":
        return _png(data)
    if declared == "image/gif":
        return _gif(data)
    if declared == "image/jpeg":
        return _jpeg(data)
    if declared == "image/webp":
        return _webp(data)
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    """The largest size of the IHDR chunks before the image data: Pillow reads every chunk up to the first
    IDAT (fdAT in an APNG) and keeps the last IHDR's size, so a 1 x 1 one may precede a 9000 x 9000 one.
    Checksums and chunk types are not checked: a chunk Pillow would refuse can make this read larger, never
    smaller. An IHDR after the image data changes nothing: the image was allocated at the size before it."""
    width = height = 0
    found = False
    at = 8
    for _ in range(_PNG_CHUNKS):
        if at + 8 > len(data):
            break
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind in _PNG_DATA:
            break
        if kind == b"IHDR" and length >= 13 and at + 16 <= len(data):  # Pillow reads no size from a shorter
            chunk_width, chunk_height = struct.unpack(">II", data[at + 8 : at + 16])
            width, height, found = max(width, chunk_width), max(height, chunk_height), True
        at += 12 + length  # length, type, data, checksum
    else:
        return None  # more chunks than any encoder writes: not worth walking
    return (width, height) if found else None


def _gif(data: bytes) -> tuple[int, int] | None:
    """The logical screen, grown as Pillow grows it to each frame's extent (x0 + w, y0 + h): a 1 x 1 screen
    may hold a 9000 x 9000 frame. Blocks are walked as Pillow walks them, quirks included, so that no
    descriptor it reads is hidden from this walk."""
    if len(data) < 13:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    at = 13 + (3 << (data[10] & 7) + 1 if data[10] & 0x80 else 0)  # after the global colour table
    walk = _Walk(data, 4096 + len(data) // 128)  # an encoder writes 255-byte sub-blocks: far fewer steps
    frame = 0
    while walk.steps > 0:
        found = _GIF_BLOCK.search(data, at)
        if found is None or data[at := found.start()] == 0x3B:  # the trailer
            break
        if data[at] == 0x21:  # an extension: its label, then sub-blocks
            if at + 1 >= len(data):
                return None
            label = data[at + 1]
            block, at = walk.block(at + 2)
            if label == 0xFE:  # a comment: its sub-blocks up to an empty one, and no further
                if block:
                    at = walk.chain(at)
                continue
            if label == 0xFF and frame == 0 and block is not None and block.startswith(b"NETSCAPE2.0"):
                block, at = walk.block(at)
            at = walk.chain(at)  # Pillow reads a further chain here even after an empty first sub-block
            continue
        if at + 10 > len(data):
            return None
        x0, y0, w, h, flags = struct.unpack("<HHHHB", data[at + 1 : at + 10])
        width, height = max(width, x0 + w), max(height, y0 + h)
        at += 10 + (3 << (flags & 7) + 1 if flags & 0x80 else 0) + 1  # local colour table, LZW code size
        at = walk.chain(at)  # the image data
        frame += 1
    return (width, height) if walk.steps > 0 else None


class _Walk:
    """GIF sub-blocks read as Pillow's ``GifImageFile.data`` reads them, counting the steps left."""

    def __init__(self, data: bytes, steps: int):
        self.data, self.steps = data, steps

    def block(self, at: int) -> tuple[bytes | None, int]:
        """One sub-block at ``at``: its bytes (None for an empty one, or at the end), and where it ends."""
        self.steps -= 1
        if at >= len(self.data) or not self.data[at]:
            return None, min(at + 1, len(self.data))
        return self.data[at + 1 : at + 1 + self.data[at]], at + 1 + self.data[at]

    def chain(self, at: int) -> int:
        """Past sub-blocks up to an empty one."""
        block, at = self.block(at)
        while block and self.steps > 0:
            block, at = self.block(at)
        return at


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """The largest size of the start-of-frame segments before the scan: Pillow keeps the last one it reads
    (libjpeg the first), and allocates it before decoding; non-0xFF bytes between segments are skipped."""
    width = height = 0
    found = False
    at = 2
    for _ in range(_JPEG_SEGMENTS):
        at = data.find(b"\xff", at)
        if at < 0:
            break
        run = _FF_RUN.match(data, at)
        assert run is not None, "data[at] is 0xFF: the run holds it"
        at = run.end() - 1  # fill bytes: the last 0xFF of a run starts the marker
        if at + 1 >= len(data):
            break
        marker = data[at + 1]
        if marker == 0x00 or marker in _BARE:  # an escaped 0xFF, or a marker without a length
            at += 2
            continue
        if marker not in _SOF and marker not in _SKIPPED:
            return None  # Pillow cannot read this file either
        if at + 4 > len(data):
            break
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF:
            if at + 9 > len(data):
                return None
            frame_height, frame_width = struct.unpack(">HH", data[at + 5 : at + 9])
            width, height, found = max(width, frame_width), max(height, frame_height), True
        if marker == 0xDA:  # the scan: Pillow reads no further header
            return (width, height) if found else None
        at += 2 + max(length, 2)
    else:
        return None  # more segments than any encoder writes: not worth walking
    return (width, height) if found else None


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

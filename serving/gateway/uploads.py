"""Uploads as the audio routes take them in: a ``multipart/form-data`` body, read strictly, and a WAV file's
duration read from its header.

Contract: the body is already in memory and bounded (audio.py); parsing it splits it by its delimiter (a
copy of the body, two at the peak, bounded by its size), refuses more than ``MAX_PARTS`` parts or a second
file, and every refusal is a ``PayloadError`` naming the part. The duration bounds what the engine will
decode: the first ``data`` chunk's samples that were really sent and every later data chunk's (ffmpeg reads
on to them; a first chunk sized 0, streamed, or claiming more than came counts the rest of the file), at
the rate of a ``fmt `` chunk whose figures agree with each other (PCM or float, an extensible one's
SubFormat too), so that it cannot be made to look shorter than it plays.
"""

from __future__ import annotations

import re
import secrets
import struct
from typing import NamedTuple

from serving.gateway.payloads import PayloadError

MAX_PARTS = 16
MAX_FIELD_BYTES = 8192
MAX_CHUNKS = 64  # RIFF chunks looked through for fmt and data
_BOUNDARY = re.compile(
    rb"""boundary=(?:"([0-9A-Za-z'()+_,./:=? -]{1,70})"|([0-9A-Za-z'()+_,./:=?-]{1,70}))"""
)
_PARAM = re.compile(rb';\s*(name|filename)="([^"\r\n]{0,255})"')


class Upload(NamedTuple):
    """A parsed form: its text fields (a repeated field as a list) and its one file."""

    fields: dict[str, str | list[str]]
    filename: str
    content: bytes


def parse_form(content_type: bytes, body: bytes, file_field: str = "file") -> Upload:
    """The fields and the file of a multipart body."""
    if not content_type[:19].lower() == b"multipart/form-data":
        raise PayloadError(
            "Send the audio as multipart/form-data (a `file` part and a `model` field).",
            "file",
            "invalid_content_type",
        )
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise PayloadError("The multipart body has no boundary.", "file", "invalid_multipart")
    delimiter = b"\r\n--" + (found.group(1) or found.group(2))
    pieces = (b"\r\n" + body).split(delimiter)
    if pieces[0] != b"" or len(pieces) < 3:
        raise PayloadError("The multipart body is malformed.", "file", "invalid_multipart")
    if len(pieces) > MAX_PARTS + 2:
        raise PayloadError(f"A form may have at most {MAX_PARTS} parts.", "file", "invalid_multipart")
    fields: dict[str, str | list[str]] = {}
    upload: tuple[str, bytes] | None = None
    closed = False
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            closed = True
            break
        head, separator, content = piece.partition(b"\r\n\r\n")
        if not head.startswith(b"\r\n") or not separator:
            raise PayloadError("The multipart body is malformed.", "file", "invalid_multipart")
        name, filename = _disposition(head)
        if filename is not None or name == file_field:
            if name != file_field:
                raise PayloadError(
                    f"Only one file is taken, as `{file_field}`.", name[:64], "invalid_multipart"
                )
            if upload is not None:
                raise PayloadError(f"Send one file only, as `{file_field}`.", file_field, "invalid_multipart")
            upload = (filename or "", content)
            continue
        if len(content) > MAX_FIELD_BYTES:
            raise PayloadError(f"`{name}` is too long.", name[:64], "invalid_value")
        try:
            value = content.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"`{name}` is not UTF-8 text.", name[:64], "invalid_value") from None
        if name.endswith("[]"):
            listed = fields.setdefault(name, [])
            if not isinstance(listed, list):
                raise PayloadError(f"`{name}` is given twice.", name[:64], "invalid_multipart")
            listed.append(value)
        elif name in fields:
            raise PayloadError(f"`{name}` is given twice.", name[:64], "invalid_multipart")
        else:
            fields[name] = value
    if not closed:
        raise PayloadError("The multipart body is not closed.", "file", "invalid_multipart")
    if upload is None:
        raise PayloadError(
            f"Missing required parameter: `{file_field}`.", file_field, "missing_required_parameter"
        )
    return Upload(fields, upload[0], upload[1])


def _disposition(head: bytes) -> tuple[str, str | None]:
    for line in head.split(b"\r\n"):
        if line[:20].lower() == b"content-disposition:":
            params = {k.decode(): v.decode("utf-8", "replace") for k, v in _PARAM.findall(line)}
            if "name" in params and line[20:].strip()[:9].lower() == b"form-data":
                return params["name"], params.get("filename")
    raise PayloadError("A multipart part has no form-data name.", "file", "invalid_multipart")


def encode_form(fields: dict[str, str | list[str]], filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body of ``fields`` and the file, and its content type (for the engine)."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{item}\r\n'.encode()
            )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
    )
    return (
        b"".join(parts) + content + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


# --- WAV --------------------------------------------------------------------------------------------
PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
# WAVE_FORMAT_EXTENSIBLE names its coding by a SubFormat GUID (KSDATAFORMAT_SUBTYPE_*), which decoders
# follow (ffmpeg decodes MP3 or ADPCM from it): only PCM's and float's are taken.
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
SUB_FORMATS = {PCM.to_bytes(2, "little") + _GUID_TAIL, FLOAT.to_bytes(2, "little") + _GUID_TAIL}


def wav_duration_ms(data: bytes) -> int:
    """How long a WAV file plays, in milliseconds (rounded up); PayloadError when it is no WAV we take."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise PayloadError(
            "The file is not a WAV file (RIFF/WAVE): the gateway takes WAV audio, whose duration it can bound.",
            "file",
            "invalid_audio",
        )
    position, rate = 12, 0
    block = 0
    for _ in range(MAX_CHUNKS):
        if position + 8 > len(data):
            break
        chunk, size = (
            data[position : position + 4],
            int.from_bytes(data[position + 4 : position + 8], "little"),
        )
        start = position + 8
        if chunk == b"fmt ":
            if rate:
                # Decoders keep the first format chunk (libsndfile, ffmpeg); figures read from another
                # would bound a duration the engine never decodes.
                raise PayloadError("The WAV file has more than one format chunk.", "file", "invalid_audio")
            if size < 16 or start + 16 > len(data):
                raise PayloadError("The WAV file's format chunk is truncated.", "file", "invalid_audio")
            kind, channels, rate, byte_rate, block, bits = struct.unpack_from("<HHIIHH", data, start)
            if (
                kind not in (PCM, FLOAT, EXTENSIBLE)
                or not 1 <= channels <= 16
                or not 1000 <= rate <= 384_000
                or bits not in (8, 16, 24, 32, 64)
                or block != channels * bits // 8
                or byte_rate != rate * block
            ):
                raise PayloadError(
                    "The WAV file's format is not uncompressed PCM or float with consistent figures.",
                    "file",
                    "invalid_audio",
                )
            if kind == EXTENSIBLE:
                _check_extensible(data, start, size, bits)
        elif chunk == b"data":
            if not rate:
                raise PayloadError("The WAV file has audio before its format chunk.", "file", "invalid_audio")
            samples = _audio_bytes(data, start, size) // block
            return -(-samples * 1000 // rate)
        position = start + size + (size & 1)  # chunks are padded to an even length
    raise PayloadError("The WAV file has no audio data chunk.", "file", "invalid_audio")


def _audio_bytes(data: bytes, start: int, size: int) -> int:
    """The audio bytes ffmpeg decodes (the GPU engine decodes through it) from the first data chunk, whose
    header ends at ``start``: a first chunk of size 0 or 0xFFFFFFFF (streamed) or claiming more than was sent
    plays to the end of the file; else ffmpeg goes on past it to every later data chunk, skipping the other
    chunks (a 1 ms chunk followed by a 2-minute one plays 2 minutes), so those count and metadata does not.
    Past ``MAX_CHUNKS`` more chunks, the rest of the file counts."""
    sent = len(data) - start
    if size == 0 or size >= sent:
        return sent
    total, position = size, start + size + (size & 1)
    for _ in range(MAX_CHUNKS):
        if position + 8 > len(data):
            return total
        chunk, length = (
            data[position : position + 4],
            int.from_bytes(data[position + 4 : position + 8], "little"),
        )
        position += 8
        if chunk == b"data":
            total += min(length, len(data) - position)
        position += length + (length & 1)
    return total + max(0, len(data) - position)


def _check_extensible(data: bytes, start: int, size: int, bits: int) -> None:
    """A WAVE_FORMAT_EXTENSIBLE chunk whose SubFormat is PCM or float, its valid bits within the sample's."""
    if size < 40 or start + 40 > len(data):
        raise PayloadError(
            "The WAV file's extensible format chunk is truncated (it has no SubFormat).",
            "file",
            "invalid_audio",
        )
    extra, valid = struct.unpack_from("<HH", data, start + 16)
    if extra < 22 or data[start + 24 : start + 40] not in SUB_FORMATS or valid > bits:
        raise PayloadError(
            "The WAV file's extensible format is not uncompressed PCM or float (its SubFormat says otherwise).",
            "file",
            "invalid_audio",
        )

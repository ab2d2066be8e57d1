"""The audio routes' multipart reader and WAV duration, and the image checks, on hostile input: no
processes, just the functions the gateway calls before anything reaches an engine."""

from __future__ import annotations

import struct

import pytest

from serving.gateway import images, uploads
from serving.gateway.payloads import PayloadError
from tests.gateway.media import sine_wav

FORM = b"multipart/form-data; boundary=XyZ"


def form(*parts: bytes, end: bytes = b"--XyZ--\r\n") -> bytes:
    return b"".join(b"--XyZ\r\n" + part + b"\r\n" for part in parts) + end


def field(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


def upload(content: bytes, name: str = "file") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"; filename="a.wav"\r\n\r\n'.encode() + content


def refusal(call, *args) -> PayloadError:
    with pytest.raises(PayloadError) as excinfo:
        call(*args)
    return excinfo.value


def test_a_form_is_read_back_exactly_as_it_is_encoded_for_the_engine():
    audio = sine_wav(0.25) + b"\r\n--XyZ"  # bytes that look like a boundary stay inside a fresh one
    body, content_type = uploads.encode_form(
        {"model": "m", "timestamp_granularities[]": ["word"]}, "x", audio
    )
    read = uploads.parse_form(content_type.encode(), body)
    assert read.fields == {"model": "m", "timestamp_granularities[]": ["word"]} and read.content == audio


def test_a_quoted_boundary_and_an_epilogue_are_taken():
    body = form(field("model", b"m"), upload(b"RIFF")) + b"epilogue"
    read = uploads.parse_form(b'multipart/form-data; boundary="XyZ"', body)
    assert read.fields == {"model": "m"} and read.content == b"RIFF"


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        (b"application/json", b"{}", "invalid_content_type"),
        (b"multipart/form-data", form(upload(b"x")), "invalid_multipart"),
        (FORM, b"garbage" + form(upload(b"x")), "invalid_multipart"),
        (FORM, form(upload(b"x"), end=b""), "invalid_multipart"),
        (FORM, form(field("model", b"m")), "missing_required_parameter"),
        (FORM, form(upload(b"x"), upload(b"y")), "invalid_multipart"),
        (FORM, form(upload(b"x"), upload(b"y", name="other")), "invalid_multipart"),
        (FORM, form(upload(b"x"), field("model", b"a"), field("model", b"b")), "invalid_multipart"),
        (FORM, form(upload(b"x"), field("model", b"\xff\xfe")), "invalid_value"),
        (FORM, form(upload(b"x"), field("prompt", b"p" * 9000)), "invalid_value"),
        (FORM, form(upload(b"x"), b"Content-Type: text/plain\r\n\r\nno name"), "invalid_multipart"),
        (FORM, form(upload(b"x"), *[field(f"f{i}", b"v") for i in range(20)]), "invalid_multipart"),
    ],
    ids=[
        "not multipart",
        "no boundary",
        "a preamble without a delimiter",
        "not closed",
        "no file",
        "two files",
        "a file under another name",
        "a field twice",
        "a field not UTF-8",
        "a huge field",
        "a part without a name",
        "too many parts",
    ],
)
def test_hostile_forms_are_refused(content_type, body, code):
    assert refusal(uploads.parse_form, content_type, body).code == code


def test_the_duration_is_the_samples_sent_at_the_format_s_rate():
    assert uploads.wav_duration_ms(sine_wav(1.5)) == 1500
    assert uploads.wav_duration_ms(sine_wav(1.0, rate=8000)) == 1000
    stereo = bytearray(sine_wav(1.0))
    struct.pack_into("<HHIIHH", stereo, 20, 1, 2, 8000, 32000, 4, 16)  # the same bytes read as stereo 8 kHz
    assert uploads.wav_duration_ms(bytes(stereo)) == 1000


def test_chunks_before_the_audio_are_skipped_and_their_padding_honoured():
    wav = sine_wav(0.5)
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\0"  # an odd-sized chunk, padded to even
    assert uploads.wav_duration_ms(wav[:36] + extra + wav[36:]) == 500


def test_audio_after_the_first_data_chunk_counts_as_ffmpeg_decodes_it_too():
    """ffmpeg's WAV reader (how a GPU engine decodes an upload) reads on past the first data chunk: a file
    whose first data chunk holds 1 ms and a second one 2 s plays 2 s there, and was billed 1 ms."""
    wav = sine_wav(2.0)  # 16 kHz, 16-bit mono: 32 bytes a millisecond
    head, audio = wav[:36], wav[44:]
    two = (
        head + b"data" + struct.pack("<I", 32) + audio[:32] + b"data" + struct.pack("<I", len(audio)) + audio
    )
    assert uploads.wav_duration_ms(two) >= 2001
    covered = wav + b"id3 " + struct.pack("<I", 300_000) + bytes(300_000)  # metadata after it: not audio
    assert uploads.wav_duration_ms(covered) == 2000
    streamed = head + b"data" + struct.pack("<I", 0) + audio  # size 0: ffmpeg reads to the end of the file
    assert uploads.wav_duration_ms(streamed) == 2000


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RIFF\0\0\0\0WAVX",
        sine_wav(0.1)[:12] + sine_wav(0.1)[36:],  # audio before any format
        sine_wav(0.1)[:30],  # the format chunk cut short
        sine_wav(0.1)[:36],  # no data chunk
        b"RIFF\0\0\0\0WAVE"
        + (b"JUNK" + struct.pack("<I", 0)) * 100
        + sine_wav(0.1)[12:],  # past the chunk bound
    ],
    ids=["empty", "not WAVE", "data first", "format cut", "no data", "too many chunks"],
)
def test_files_that_are_no_wav_we_can_bound_are_refused(data):
    assert refusal(uploads.wav_duration_ms, data).code == "invalid_audio"


def test_a_second_format_chunk_is_refused_since_decoders_keep_the_first():
    """libsndfile and ffmpeg decode by the first format chunk: a later one (16 channels of 64-bit samples
    at 384 kHz, say) would make the gateway read 128 bytes a frame where the engine reads 1, so a 7-hour
    upload would be bounded, reserved and billed as half a second."""
    slow = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 1000, 1000, 1, 8)
    fast = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 16, 384_000, 384_000 * 128, 128, 64)
    audio = b"\x80" * 65_536
    wav = b"RIFF\0\0\0\0WAVE" + slow + fast + b"data" + struct.pack("<I", len(audio)) + audio
    assert refusal(uploads.wav_duration_ms, wav).code == "invalid_audio"
    assert uploads.wav_duration_ms(b"RIFF\0\0\0\0WAVE" + slow + b"data" + wav[-len(audio) - 4 :]) == 65_536


@pytest.mark.parametrize(
    "kind", [2, 0x55, 0x11]
)  # ADPCM, MP3 and IMA ADPCM in a WAV: durations not from the header
def test_compressed_wavs_are_refused(kind):
    wav = bytearray(sine_wav(0.1))
    struct.pack_into("<H", wav, 20, kind)
    assert refusal(uploads.wav_duration_ms, bytes(wav)).code == "invalid_audio"


# --- Images ---------------------------------------------------------------------------------------
def extensible_wav(sub_format: int, *, extra: int = 22, valid: int = 16, size: int = 40) -> bytes:
    """A 1 s 16 kHz 16-bit mono WAV whose format chunk is WAVE_FORMAT_EXTENSIBLE naming ``sub_format``."""
    guid = struct.pack("<I", sub_format) + bytes.fromhex("00001000800000aa00389b71")
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 16000, 32000, 2, 16, extra, valid, 4) + guid
    audio = b"\0\0" * 16000
    return (
        b"RIFF\0\0\0\0WAVE"
        + b"fmt "
        + struct.pack("<I", size)
        + fmt[:size]
        + b"data"
        + struct.pack("<I", len(audio))
        + audio
    )


def test_an_extensible_wav_is_taken_only_when_its_sub_format_is_pcm_or_float():
    """ffmpeg decodes an extensible WAV by its SubFormat GUID: one naming MP3 (0x55) would be billed as a
    second of PCM while minutes of audio decode."""
    assert uploads.wav_duration_ms(extensible_wav(1)) == 1000
    assert uploads.wav_duration_ms(extensible_wav(3)) == 1000
    for wav in (
        extensible_wav(0x55),  # MP3
        extensible_wav(2),  # ADPCM
        extensible_wav(1, size=16),  # no SubFormat at all
        extensible_wav(1, extra=0),
        extensible_wav(1, valid=24),  # more valid bits than a sample holds
    ):
        error = refusal(uploads.wav_duration_ms, wav)
        assert (error.code, error.param) == ("invalid_audio", "file") and "format" in error.message


def test_plain_text_conversations_have_no_images(settings):
    assert images.inspect([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]) == (
        0,
        0,
    )


def test_an_image_url_is_allowed_only_as_written_on_the_list(settings):
    settings.GATEWAY_IMAGE_HOSTS = ["images.internal"]
    part = {"type": "image_url", "image_url": {"url": "http://images.internal/a.png"}}
    assert images.inspect([{"role": "user", "content": [part]}]) == (1, len("http://images.internal/a.png"))
    settings.GATEWAY_IMAGE_HOSTS = []
    error = refusal(images.inspect, [{"role": "user", "content": [part]}])
    assert error.code == "image_url_not_allowed" and "none are configured" in error.message


def test_webp_needs_its_second_signature_too(settings):
    import base64

    fake = base64.b64encode(b"RIFF\0\0\0\0WAVEfmt ").decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/webp;base64,{fake}"}}
    assert refusal(images.inspect, [{"role": "user", "content": [part]}]).code == "invalid_image"
    real = base64.b64encode(b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0\x2f\0\0\0\0").decode()  # a 1 x 1 lossless header
    part["image_url"]["url"] = f"data:image/webp;base64,{real}"
    assert images.inspect([{"role": "user", "content": [part]}]).number == 1

"""Image content parts of a chat call: what an engine may be asked to look at, and what admission reserves.

Contract: the engine never fetches an arbitrary URL on a client's behalf (SSRF). An ``image_url`` is either a
``data:`` URI of an allowed image type, checked by its magic bytes and bounded in decoded size, or an
``http(s)`` URL whose host is, exactly, one of the internal hosts on the allow-list
(``PORTFOLIO_GATEWAY_IMAGE_HOSTS``); the URL must be plain (no user info, no escapes, no backslashes, no
fragment) so that the engine's URL parser cannot read another host out of it than the gateway did. Every other
URL (``file:``, the cloud metadata address, ``localhost`` and its disguises) is refused, and so are the
content parts by which vLLM would fetch audio or video, and any key on a part beyond its type and its kind's
own (vLLM takes a part with a ``uuid`` for media, whatever its type). A data URI's width and height are read
from its header, never by decoding it, and one whose size cannot be read is refused. A request carries at most
``PORTFOLIO_GATEWAY_MAX_IMAGES`` images, and admission reserves a bounded number of prompt tokens for each
instead of its bytes (the engine turns an image into a bounded number of tokens, not one per byte): the figure
of the model behind the endpoint where the registry knows it (``tokens_per_image``, carried in the routing
table), else ``PORTFOLIO_GATEWAY_IMAGE_TOKENS`` where an operator set it, else the model's context: a model
that tiles an image or sizes it by its pixels may turn one image into thousands of tokens, and only the
context bounds them all. Plain text conversations pay only a type test per message.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple

from django.conf import settings

from serving.gateway import image_sizes
from serving.gateway.payloads import PayloadError

# Content part types a chat message may hold: text, and images checked here. vLLM also takes audio_url,
# video_url, input_audio and embeddings parts: refused, as they fetch URLs or bypass these checks.
TEXT_PARTS = {"text", "refusal"}
MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and "WEBP" at offset 8, checked below
}
_DATA_URI = re.compile(r"data:(image/[a-z0-9.+-]{1,40});base64,", re.ASCII)
# A plain absolute URL: scheme, host[:port], then a path and query of unreserved and sub-delimiter
# characters only ('%' escapes too, but never in the host). No '@' before the path, no '\\', no '#'.
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9.-]{1,253}(?::[0-9]{1,5})?)(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?"
    r"(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?",
    re.ASCII,
)
MAX_URL = 2048


# Architectures whose processor makes every image, whatever its size, into the same number of placeholder
# tokens: the registry's ``vision.tokens_per_image`` (families.py, from the config's ``mm_tokens_per_image``
# or ``image_seq_length``) is then the whole image. Gemma 3 (pan-and-scan is off unless its processor config
# turns it on, and requests cannot: ``mm_processor_kwargs`` is not on the allow-list) and PaliGemma. Models
# that tile an image (Idefics3/SmolVLM, LLaVA-NeXT, InternVL, Phi-3-vision) or size it dynamically (Qwen2-VL,
# Pixtral, which is also served as LlavaForConditionalGeneration) record a tile's figure or none: for them
# the fixed bound stays (the configured one, else the context), raised to the recorded figure where larger.
ONE_TILE_ARCHITECTURES = frozenset({"Gemma3ForConditionalGeneration", "PaliGemmaForConditionalGeneration"})
# What the processor puts around an image's placeholders (Gemma 3: "\n\n", <start_of_image>, <end_of_image>,
# "\n\n"), with room to spare; the content part's own JSON (some 40 bytes) is counted in the prompt too.
IMAGE_MARKER_TOKENS = 16


def tokens_per_image(architecture: str, facts: dict, fixed: int) -> int:
    """The most prompt tokens the engine counts for one image on a version of ``architecture`` with these
    architecture facts (ModelVersion.architecture_facts, from families.read); ``fixed``: the bound for a
    model whose figure is not known to be the whole image (PORTFOLIO_GATEWAY_IMAGE_TOKENS, else the
    deployment's context: routing._model_limits)."""
    vision = facts.get("vision") if isinstance(facts, dict) else None
    recorded = vision.get("tokens_per_image") if isinstance(vision, dict) else None
    if type(recorded) is not int or recorded <= 0:
        return fixed
    if architecture in ONE_TILE_ARCHITECTURES:
        return recorded + IMAGE_MARKER_TOKENS
    return max(fixed, recorded + IMAGE_MARKER_TOKENS)


class Images(NamedTuple):
    """The images of a conversation: how many, and the characters of their URLs in the body."""

    number: int
    url_chars: int


def inspect(messages: list) -> Images:
    """Check every content part of ``messages`` (already a list of objects); PayloadError names the part."""
    count = url_chars = 0
    limit = settings.GATEWAY_MAX_IMAGES
    for m, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            if content is None or type(content) is str:
                continue  # no parts
            # OpenAI's content is text or parts; vLLM takes an object as parts (its keys), never rendered.
            where = f"messages[{m}].content"
            raise PayloadError(
                f"`{where}` must be a string or an array of content parts.", where, "invalid_type"
            )
        for p, part in enumerate(content):
            where = f"messages[{m}].content[{p}]"
            if not isinstance(part, dict):
                raise PayloadError(f"`{where}` must be a content part object.", where, "invalid_type")
            kind = part.get("type")
            if not isinstance(kind, str):  # a list or an object cannot even be looked up among the kinds
                raise PayloadError(f"`{where}.type` must be a string.", f"{where}.type", "invalid_type")
            if kind in TEXT_PARTS:
                if not isinstance(part.get(kind), str):  # {"type": "text", "text": ...}, and a refusal's own
                    raise PayloadError(
                        f"`{where}.{kind}` must be a string.", f"{where}.{kind}", "invalid_type"
                    )
                if len(part) != 2:
                    _refuse_extra(part, kind, where)
                continue
            if kind != "image_url":
                shown = kind if len(kind) <= 40 else "…"
                raise PayloadError(
                    f"`{where}.type` {shown!r} is not accepted: send text and image_url parts only.",
                    f"{where}.type",
                    "unsupported_content",
                )
            if len(part) != 2:
                _refuse_extra(part, kind, where)
            count += 1
            if count > limit:
                raise PayloadError(f"A request may hold at most {limit} images.", where, "too_many_images")
            url_chars += _check_image(part.get("image_url"), f"{where}.image_url")
    return Images(count, url_chars)


def _refuse_extra(part: dict, kind: str, where: str) -> None:
    """A part holds its type and its kind's own key, nothing else: vLLM reads a part with a ``uuid`` as
    media whatever its type (an ``image_url``, ``audio_url`` or ``video_url`` beside a text is fetched),
    keys its multimodal cache by that uuid across callers, and passes a text part's other keys to the chat
    template."""
    unknown = set(part) - {"type", kind}
    if unknown:
        name = sorted(map(str, unknown))[0][:40]
        raise PayloadError(f"Unrecognized field `{where}.{name}`.", f"{where}.{name}", "unknown_parameter")


def _check_image(image, where: str) -> int:
    """The URL's length, once it is found acceptable."""
    if not isinstance(image, dict):
        raise PayloadError(f"`{where}` must be an object with a `url`.", where, "invalid_type")
    unknown = set(image) - {"url", "detail"}
    if unknown:
        name = sorted(unknown)[0][:40]
        raise PayloadError(f"Unrecognized field `{where}.{name}`.", f"{where}.{name}", "unknown_parameter")
    detail = image.get("detail")
    if detail is not None and detail not in ("auto", "low", "high"):
        raise PayloadError(f"`{where}.detail` must be auto, low or high.", f"{where}.detail")
    url = image.get("url")
    if not isinstance(url, str) or not url:
        raise PayloadError(f"`{where}.url` must be a non-empty string.", f"{where}.url", "invalid_type")
    if url[:5].lower() == "data:":
        _check_data_uri(url, f"{where}.url")
    else:
        _check_internal_url(url, f"{where}.url")
    return len(url)


def _check_data_uri(url: str, where: str) -> None:
    found = _DATA_URI.match(url)
    if found is None:
        raise PayloadError(
            f"`{where}`: a data URI must be `data:image/<type>;base64,<data>`.", where, "invalid_image"
        )
    declared = found.group(1)
    if declared not in MAGIC:
        raise PayloadError(
            f"`{where}`: {declared} is not accepted; send one of {', '.join(sorted(MAGIC))}.",
            where,
            "invalid_image",
        )
    encoded = url[found.end() :]
    most = settings.GATEWAY_MAX_IMAGE_BYTES
    if len(encoded) > (most + 2) // 3 * 4:  # refused before decoding anything
        raise PayloadError(f"`{where}`: an image may be at most {most} bytes.", where, "image_too_large")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"`{where}`: the image is not valid base64.", where, "invalid_image") from None
    if len(data) > most:
        raise PayloadError(f"`{where}`: an image may be at most {most} bytes.", where, "image_too_large")
    if not _is(declared, data):
        raise PayloadError(
            f"`{where}`: the data is not a {declared} image (its first bytes say otherwise).",
            where,
            "invalid_image",
        )
    size = image_sizes.dimensions(declared, data)
    if size is None:  # its pixels cannot be bounded, and the engine's decoder may read a size out of it
        raise PayloadError(
            f"`{where}`: the image's dimensions are unreadable (no {declared} header found).",
            where,
            "invalid_image",
        )
    most_pixels = settings.GATEWAY_MAX_IMAGE_PIXELS
    if size[0] * size[1] > most_pixels:
        raise PayloadError(
            f"`{where}`: the image is {size[0]} x {size[1]} pixels; at most {most_pixels:,} pixels.",
            where,
            "image_too_large",
        )


def _is(declared: str, data: bytes) -> bool:
    if not any(data.startswith(magic) for magic in MAGIC[declared]):
        return False
    return declared != "image/webp" or data[8:12] == b"WEBP"


def _check_internal_url(url: str, where: str) -> None:
    hosts = settings.GATEWAY_IMAGE_HOSTS
    plain = _PLAIN_URL.fullmatch(url) if len(url) <= MAX_URL else None
    # The host is compared as written, lower case: no resolution, no normalisation the engine might
    # undo differently (a trailing dot, an IP in another notation, percent escapes are all not on the list).
    if plain is None or plain.group(2) not in hosts:
        allowed = ", ".join(hosts) if hosts else "none are configured"
        raise PayloadError(
            f"`{where}`: images are taken as data URIs, or from the internal image hosts ({allowed}); "
            "the engine fetches no other URL.",
            where,
            "image_url_not_allowed",
        )

"""Chat calls with image content parts through a real gateway process: data URIs checked by their magic
bytes and size, URLs only on the internal hosts' allow-list (no engine fetches a URL a client chose), a
bounded reservation per image, and a bounded number of images; every refusal in OpenAI's shape before the
engine sees the request."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import openai
import pytest

from portfolio.registry.models import ModelVersion
from serving.gateway.images import IMAGE_MARKER_TOKENS
from serving.gateway.models import UsageEvent
from serving.gateway.payloads import CHAT_TEMPLATE_TOKENS
from tests.gateway.conftest import flush_settled, wait_for_model
from tests.gateway.media import client, error_of, media_gateway

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["media_gateway"]
PNG = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIHDR" + struct.pack(">II", 8, 8) + b"\0" * 48  # its size readable
GIF = b"GIF89a" + b"\0" * 64


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def looking_at(*urls: str, detail: str | None = None) -> list[dict]:
    parts: list[dict] = [{"type": "text", "text": "What is in the picture?"}]
    for url in urls:
        image = {"url": url} if detail is None else {"url": url, "detail": detail}
        parts.append({"type": "image_url", "image_url": image})
    return [{"role": "user", "content": parts}]


@pytest.fixture
def vision(media_gateway, stack):
    dep, engines = stack["deployment"]("vision-dep")
    stack["endpoint"]("vision", dep)
    secret = stack["key"]()
    wait_for_model(media_gateway, secret, "vision")
    return {"base": media_gateway, "secret": secret, "engine": engines[0], "stack": stack}


def chat(vision, messages, secret: str | None = None, **extra) -> httpx.Response:
    return httpx.post(
        f"{vision['base']}/v1/chat/completions",
        json={"model": "vision", "messages": messages, "max_completion_tokens": 4} | extra,
        headers={"Authorization": f"Bearer {secret or vision['secret']}"},
        timeout=20,
    )


def test_an_image_as_a_data_uri_and_one_from_an_internal_host_reach_the_engine_as_sent(vision):
    urls = (data_uri(PNG), "https://media.corp.example:8443/scans/42.jpg?size=large")
    answer = client(vision["base"], vision["secret"]).chat.completions.create(
        model="vision", messages=looking_at(*urls, detail="low"), max_completion_tokens=4
    )
    assert answer.choices[0].message.content.strip() == "word word word word"
    sent = vision["engine"].requests[-1]["messages"][0]["content"]
    assert [part["image_url"]["url"] for part in sent[1:]] == list(urls)
    flush_settled()
    assert UsageEvent.objects.get().status == 200


def test_an_image_reserves_its_bounded_tokens_not_one_per_byte_of_its_data(vision):
    # About 4,100 bytes of base64 against a limit of 400 tokens a minute (the context, 512, clips any
    # prompt's reservation): the image reserves 100 tokens (PORTFOLIO_GATEWAY_IMAGE_TOKENS), so the call
    # fits; counted by its bytes it could never be admitted.
    secret = vision["stack"]["key"](tpm_limit=400)
    image = data_uri(PNG + b"\1" * 3000)
    assert len(image) > 4000
    response = chat(vision, looking_at(image), secret=secret)
    assert response.status_code == 200, response.text
    refused = chat(vision, [{"role": "user", "content": "x" * 4000}], secret=secret)
    assert refused.status_code == 429, "text still reserves a token per byte"


def test_an_image_reserves_the_tokens_of_the_model_behind_the_endpoint_when_the_registry_knows_them(vision):
    # Gemma 3 makes every image the same number of tokens: its recorded figure (plus markers) is reserved,
    # below the fixed bound (100 here) for a small tower and above it for a large one; a model the registry
    # knows nothing of ("vision") keeps the fixed bound.
    stack = vision["stack"]
    for name, tokens in (("small-tower", 4), ("large-tower", 400)):
        dep, _ = stack["deployment"](f"{name}-dep")
        ModelVersion.objects.filter(pk=dep.version_id).update(
            architecture="Gemma3ForConditionalGeneration",
            architecture_facts={"vision": {"tokens_per_image": tokens}},
        )
        stack["endpoint"](name, dep)
        wait_for_model(vision["base"], vision["secret"], name)
    messages = looking_at(data_uri(PNG), data_uri(PNG))
    urls = sum(len(part["image_url"]["url"]) for part in messages[0]["content"][1:])
    text = len(json.dumps({"model": "small-tower", "messages": messages, "max_completion_tokens": 4})) - urls
    per_image = 4 + IMAGE_MARKER_TOKENS
    # Room for the small tower's two images and 80 tokens more: not for two images at the fixed bound.
    secret = stack["key"](tpm_limit=text + CHAT_TEMPLATE_TOKENS + 2 * per_image + 4 + 80)
    assert 2 * (100 - per_image) > 80 + 40, "the margin is wider than the body's spacing can move it"
    assert chat(vision, messages, secret=secret, model="small-tower").status_code == 200
    refused = chat(vision, messages, secret=secret)
    assert refused.status_code == 429, "the fixed bound, where nothing is known"
    refused = chat(vision, looking_at(data_uri(PNG)), secret=stack["key"](tpm_limit=400), model="large-tower")
    assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]["message"]
    assert chat(vision, looking_at(data_uri(PNG)), secret=stack["key"](tpm_limit=400)).status_code == 200


def test_at_most_the_configured_number_of_images_per_request(vision):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client(vision["base"], vision["secret"]).chat.completions.create(
            model="vision", messages=looking_at(*[data_uri(PNG)] * 3)
        )
    assert error_of(excinfo)["code"] == "too_many_images"
    # Spread over messages, they still count together.
    two_messages = looking_at(data_uri(PNG), data_uri(PNG)) + looking_at(data_uri(PNG))
    assert chat(vision, two_messages).json()["error"]["code"] == "too_many_images"
    assert vision["engine"].requests == []


REFUSED_URLS = [
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://localhost/cat.png",
    "http://127.0.0.1:8000/v1/models",
    "http://[::1]/cat.png",
    "http://0x7f000001/cat.png",
    "http://2130706433/cat.png",
    "http://images.internal@169.254.169.254/cat.png",
    "http://images.internal:80@evil.example/cat.png",
    "http://169.254.169.254#@images.internal/cat.png",
    "http://169.254.169.254/?@images.internal/",
    "http://images.internal.evil.example/cat.png",
    "http://images.internal./cat.png",
    "http://images.internal\\@evil.example/cat.png",
    "http://images.internal/cat.png#frag",
    "http://images.internal:8080/cat.png",
    "https://media.corp.example/cat.png",
    "HTTP://IMAGES.INTERNAL/cat.png",
    "http://%69mages.internal/cat.png",
    "gopher://images.internal/cat.png",
    "ftp://images.internal/cat.png",
    "//images.internal/cat.png",
    "http://images.internal/cat.png\r\nHost: evil",
    "http://images.internal/" + "a" * 3000,
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_hostile_image_urls_are_refused_and_never_reach_the_engine(vision, url):
    response = chat(vision, looking_at(url))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "image_url_not_allowed" and error["type"] == "invalid_request_error", error
    assert error["param"] == "messages[0].content[1].image_url.url"
    assert vision["engine"].requests == []


def test_an_allowed_host_is_taken_exactly_as_listed(vision):
    assert chat(vision, looking_at("http://images.internal/cats/1.png?w=64")).status_code == 200


HOSTILE_PARTS = [
    ("png declared, gif sent", looking_at(data_uri(GIF, "image/png")), "invalid_image"),
    ("svg", looking_at(data_uri(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")), "invalid_image"),
    ("html", looking_at(data_uri(b"<html></html>", "text/html")), "invalid_image"),
    ("not base64", looking_at("data:image/png;base64,!!!!"), "invalid_image"),
    ("too large", looking_at(data_uri(PNG + b"\0" * 5000)), "image_too_large"),
    ("url-encoded data", looking_at("data:image/png,%89PNG"), "invalid_image"),
    ("a bad detail", looking_at(data_uri(PNG), detail="ultra"), "invalid_value"),
    ("an image as a string", [{"role": "user", "content": [{"type": "image_url", "image_url": "http://x/"}]}],
     "invalid_type"),
    ("an extra image field", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(PNG), "fetch": "http://169.254.169.254/"}}]}],
     "unknown_parameter"),
    ("audio by URL", [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": "http://169.254.169.254/a.wav"}}]}], "unsupported_content"),
    ("video by URL", [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "file:///etc/passwd"}}]}], "unsupported_content"),
    ("image embeddings", [{"role": "user", "content": [{"type": "image_embeds", "image_embeds": "AAAA"}]}],
     "unsupported_content"),
    ("a part that is not an object", [{"role": "user", "content": ["hello"]}], "invalid_type"),
    # Found by review: a type that is a list or an object was looked up in a set and answered 500.
    ("a type that is a list", [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}], "invalid_type"),
    ("a type that is an object", [{"role": "user", "content": [{"type": {"a": 1}, "text": "x"}]}],
     "invalid_type"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("messages", "code"), [c[1:] for c in HOSTILE_PARTS], ids=[c[0] for c in HOSTILE_PARTS]
)
def test_hostile_content_parts_are_refused_in_openais_shape(vision, messages, code):
    response = chat(vision, messages)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    assert error["param"].startswith("messages[0].content[")
    assert vision["engine"].requests == []


METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
# vLLM takes any part with a ``uuid`` for media, whatever its type: it fetches the media key it finds (the
# image's own checks, the image cap and the refusal of audio and video all passed by), and keys its
# multimodal cache by that uuid across every caller of the engine.
SMUGGLING_PARTS = [
    ("a text carrying an image", {"type": "text", "text": "x", "uuid": "1", "image_url": METADATA},
     "image_url"),
    ("a text carrying audio", {"type": "text", "text": "x", "uuid": "1", "audio_url": {"url": METADATA}},
     "audio_url"),
    ("a text carrying a video", {"type": "text", "text": "x", "uuid": "1", "video_url": {"url": METADATA}},
     "uuid"),
    ("a text carrying input audio", {"type": "text", "text": "x", "input_audio": {"data": "AAAA"}},
     "input_audio"),
    ("a refusal carrying a uuid", {"type": "refusal", "refusal": "no", "uuid": "1"}, "uuid"),
    ("an image carrying a cache key", {"type": "image_url", "image_url": {"url": data_uri(PNG)}, "uuid": "x"},
     "uuid"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("part", "field"), [c[1:] for c in SMUGGLING_PARTS], ids=[c[0] for c in SMUGGLING_PARTS]
)
def test_a_part_holding_more_than_its_type_and_its_own_key_is_refused_before_the_engine(vision, part, field):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, part]}]
    with pytest.raises(openai.BadRequestError) as excinfo:
        client(vision["base"], vision["secret"]).chat.completions.create(model="vision", messages=messages)
    error = error_of(excinfo)
    assert error["code"] == "unknown_parameter" and error["type"] == "invalid_request_error", error
    assert error["param"] == f"messages[0].content[1].{field}"
    assert vision["engine"].requests == []

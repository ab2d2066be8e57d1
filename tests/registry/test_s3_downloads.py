"""Downloading a model's files where the artifacts live on S3 (MinIO): the store's own address is on the
platform's internal network, which no browser resolves, so files are streamed through the platform and
verified; only an operator's published address for the store (PORTFOLIO_MINIO_PUBLIC_URL) is redirected to."""

from __future__ import annotations

import io
import uuid
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from django.utils.http import content_disposition_header

from portfolio.accounts import personal_tokens
from portfolio.registry import services
from portfolio.registry.choices import Source
from portfolio.registry.storage import CorruptArtifact, S3Store
from portfolio.registry.stores import default_store
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_model_folder

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]

CONFIG = "/api/v1/models/router/versions/1/files/config.json"


@pytest.fixture
def on_s3(settings, s3_server, imports):
    """The platform configured as the compose layout configures it: artifacts on an S3 server (moto here),
    a bucket of this test's own, and no public address for the store."""
    settings.ARTIFACT_STORE = "s3"
    settings.MINIO_ENDPOINT = s3_server
    settings.MINIO_ACCESS_KEY = settings.MINIO_SECRET_KEY = "testing"
    settings.MINIO_BUCKET = f"artifacts-{uuid.uuid4().hex[:12]}"
    settings.MINIO_SECURE = False
    settings.MINIO_REGION = None
    settings.MINIO_PUBLIC_URL = ""
    default_store.cache_clear()
    yield settings
    default_store.cache_clear()


def _router(org, team, settings):
    """Version 1 of the model "router" of ``team``, imported (into the configured store): it and its folder."""
    model = services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    return import_here(actor_for(org["engineer"]), model, Source.LOCAL, str(folder)), folder


@pytest.fixture
def ready(on_s3, org, team):
    version, folder = _router(org, team, on_s3)
    assert isinstance(default_store(), S3Store)
    return version, folder


def _bearer(user) -> dict:
    _, token = personal_tokens.create_personal_token(actor=actor_for(user), name="ci", expires_in_days=1)
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def _assert_streamed(response, expected: bytes) -> None:
    assert response.status_code == 200, response.get("Location")
    assert b"".join(response.streaming_content) == expected
    assert response["Content-Disposition"] == 'attachment; filename="config.json"'
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_a_file_on_s3_is_streamed_through_the_api_not_redirected_to_the_internal_store(client, org, ready):
    _, folder = ready
    response = client.get(CONFIG, **_bearer(org["viewer"]))
    _assert_streamed(response, (folder / "config.json").read_bytes())


def test_the_version_pages_download_link_streams_a_file_on_s3_to_the_browser(client, org, ready, signed_in):
    _, folder = ready
    browser = signed_in(org["viewer"])
    page = browser.get(reverse("version-detail", args=["router", 1])).content.decode()
    assert f'href="{CONFIG}"' in page
    _assert_streamed(browser.get(CONFIG), (folder / "config.json").read_bytes())


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_models_readme_carrying_a_script_is_handed_out_as_an_attachment_never_as_a_page(
    client, org, team, settings, request, storage
):
    """Before, the streamed download set neither header (FileResponse sets them for file objects only): the
    README.md of a model, with its <script>, came back as text/html of this origin."""
    if storage == "s3":
        request.getfixturevalue("on_s3")
    _router(org, team, settings)
    client.force_login(org["viewer"])
    response = client.get("/api/v1/models/router/versions/1/files/README.md")
    assert response.status_code == 200
    assert b"<script>" in b"".join(response.streaming_content)
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="README.md"'


def test_a_file_damaged_on_s3_is_not_handed_out_as_good(client, org, ready):
    """Streamed through the platform, the file is checked against its sha256 as on a local store."""
    version, folder = ready
    store = default_store()
    entry = version.artifact.manifest().get("config.json")
    tampered = (folder / "config.json").read_bytes().replace(b"llama", b"LLAMA")
    key = f"blobs/{entry.sha256[:2]}/{entry.sha256}"
    store.client.put_object(store.bucket, key, io.BytesIO(tampered), len(tampered))
    response = client.get(CONFIG, **_bearer(org["viewer"]))
    assert response.status_code == 200
    with pytest.raises(CorruptArtifact, match="config.json"):
        b"".join(response.streaming_content)
    version.artifact.refresh_from_db()
    assert version.artifact.health == "corrupt" and "config.json" in version.artifact.health_detail


def test_with_a_public_address_for_the_store_downloads_redirect_there_presigned(client, org, ready, on_s3):
    """Presigned for the operator's address (signed for its host, so no rewrite of the internal URL would
    do), with no request to it: the region is fixed, and the platform need not reach that address itself."""
    on_s3.MINIO_PUBLIC_URL = "https://objects.example.internal"
    default_store.cache_clear()
    for answer in (client.get(CONFIG, **_bearer(org["viewer"])), _signed_in_get(client, org["viewer"])):
        assert answer.status_code == 302
        location = urlsplit(answer["Location"])
        assert (location.scheme, location.netloc) == ("https", "objects.example.internal")
        assert location.path.startswith(f"/{on_s3.MINIO_BUCKET}/blobs/")
        query = parse_qs(location.query)
        assert query["response-content-disposition"] == ['attachment; filename="config.json"']
        assert "X-Amz-Signature" in query and query["X-Amz-Credential"][0].endswith(
            "/us-east-1/s3/aws4_request"
        )


def _signed_in_get(client, user):
    client.force_login(user)
    return client.get(CONFIG)


@pytest.mark.parametrize(
    "url",
    ["objects.example.internal", "ftp://objects.example.internal", "https://objects.example.internal/s3"],
)
def test_a_public_address_that_is_not_a_bare_http_origin_is_refused_naming_the_setting(on_s3, url):
    on_s3.MINIO_PUBLIC_URL = url
    default_store.cache_clear()
    with pytest.raises(ImproperlyConfigured, match="PORTFOLIO_MINIO_PUBLIC_URL"):
        default_store()


ODD_NAMES = ['notes "x"; filename=evil.html', "café.txt"]


@pytest.mark.parametrize("public", [False, True])
def test_a_file_whose_name_holds_quotes_or_letters_past_ascii_is_named_whole_and_never_rendered(
    client, org, team, on_s3, public
):
    """Before, the presigned URL's disposition was the name pasted between quotes (a '"' in a file's name
    ended it early and the rest was read as parameters of its own) and named no content type, so the store
    sent an HTML file as HTML; the streamed answer quoted the name already."""
    model = services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    folder = make_model_folder(on_s3.IMPORT_ROOTS[0] / "odd")
    for name in ODD_NAMES:
        (folder / name).write_text("<html><script>alert(1)</script></html>")
    import_here(actor_for(org["engineer"]), model, Source.LOCAL, str(folder))
    if public:
        on_s3.MINIO_PUBLIC_URL = "https://objects.example.internal"
        default_store.cache_clear()
    for name in ODD_NAMES:
        answer = client.get(f"/api/v1/models/router/versions/1/files/{quote(name)}", **_bearer(org["viewer"]))
        expected = content_disposition_header(True, name)
        if public:
            assert answer.status_code == 302
            query = parse_qs(urlsplit(answer["Location"]).query)
            assert query["response-content-disposition"] == [expected]
            assert query["response-content-type"] == ["application/octet-stream"]
        else:
            assert answer.status_code == 200
            assert b"".join(answer.streaming_content).startswith(b"<html>")
            assert answer["Content-Disposition"] == expected
            assert answer["Content-Type"] == "application/octet-stream"

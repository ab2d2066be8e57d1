"""Request bodies past their route's limit are refused before Django reads them: a real uvicorn process
(portfolio.asgi) spoken to over raw sockets, so that a declared length, a chunked body and a client still
sending are exactly what a hostile client would send."""

from __future__ import annotations

import inspect
import json
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.urls import reverse

from portfolio.accounts import personal_tokens
from portfolio.bodylimit import limit_for
from tests.conftest import actor_for
from tests.gateway.process import start_gateway, stop_gateway
from training import services as training_services
from training import tasks as training_tasks
from training.models import DatasetVersion

DEFAULT = 64 * 1024
UPLOAD = 256 * 1024
UPLOAD_ROUTE = UPLOAD + DEFAULT  # the file plus room for the form's other fields
QUICK = 5.0  # seconds: without the limit, the server waits for a body that never ends


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real uvicorn serving portfolio.asgi with small limits, and its own data folder."""
    root = tmp_path_factory.mktemp("bodylimit")
    log = root / "server.log"
    with django_db_blocker.unblock():
        process, base = start_gateway(
            log,
            PORTFOLIO_MAX_REQUEST_BODY_BYTES=str(DEFAULT),
            PORTFOLIO_MAX_UPLOAD_BYTES=str(UPLOAD),
            PORTFOLIO_DATA_DIR=str(root / "data"),
        )
    yield base, root / "data", log
    stop_gateway(process)


def exchange(base: str, head: str, *body: bytes) -> tuple[int, dict[str, str], bytes, float]:
    """Send a request head and body bytes as they are; (status, headers, body, seconds to the answer)."""
    url = urlsplit(base)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=QUICK) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body:
            sock.sendall(part)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head_bytes, _, rest = received.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(rest) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest, time.monotonic() - started


def chunked(total: int, size: int = 16 * 1024) -> list[bytes]:
    """``total`` bytes as chunks of a chunked body that never ends; the last chunk's own CRLF is left out so
    that the server has read every byte sent when it answers."""
    parts, left = [], total
    while left:
        n = min(size, left)
        left -= n
        parts.append(f"{n:x}\r\n".encode() + b"x" * n + (b"\r\n" if left else b""))
    return parts


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- The limits per route ---------------------------------------------------------------------------------
def test_every_rest_operation_that_takes_a_file_gets_the_upload_limit_and_others_the_default(settings):
    from portfolio.api import api

    settings.MAX_REQUEST_BODY_BYTES, settings.MAX_UPLOAD_BYTES = DEFAULT, UPLOAD
    uploads, others = [], []
    for _prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            concrete = "/api/v1" + path.replace("{", "").replace("}", "")
            concrete = "/".join("1" if part.endswith("_id") else part for part in concrete.split("/"))
            for operation in path_view.operations:
                params = inspect.signature(operation.view_func).parameters.values()
                takes_file = any("UploadedFile" in repr(p.annotation) for p in params)
                (uploads if takes_file else others).append(concrete)
    assert {limit_for(path) for path in uploads} == {UPLOAD_ROUTE} and len(uploads) == 2
    assert {limit_for(path) for path in others if path not in uploads} == {DEFAULT}


def test_the_upload_pages_get_the_upload_limit_and_other_pages_the_default(settings):
    settings.MAX_REQUEST_BODY_BYTES, settings.MAX_UPLOAD_BYTES = DEFAULT, UPLOAD
    assert limit_for(reverse("adapter-upload", kwargs={"name": "router"})) == UPLOAD_ROUTE
    assert (
        limit_for(reverse("dataset-upload", kwargs={"team": "support-ai", "name": "tickets"})) == UPLOAD_ROUTE
    )
    assert limit_for(reverse("model-edit", kwargs={"name": "router"})) == DEFAULT
    assert limit_for("/no/such/page/") == DEFAULT


# --- A real server ----------------------------------------------------------------------------------------
def test_a_body_declared_past_the_limit_is_refused_at_once_in_the_api_error_shape(server):
    base, _, _ = server
    request_id = uuid.uuid4().hex
    status, headers, body, seconds = exchange(
        base,
        f"POST /api/v1/teams HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\nContent-Length: {10 * 1024**3}\n"
        f"X-Request-ID: {request_id}\n",
    )  # and not one byte of the body
    assert status == 413 and seconds < QUICK
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and f"{DEFAULT:,} bytes" in error["message"]
    assert error["request_id"] == request_id == headers["x-request-id"]
    assert headers["connection"] == "close"


def test_a_chunked_body_is_cut_off_at_the_limit_with_a_plain_page_in_the_ui(server):
    base, _, _ = server
    status, headers, body, seconds = exchange(
        base,
        "POST /login/ HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/x-www-form-urlencoded\n"
        "Transfer-Encoding: chunked\n",
        *chunked(DEFAULT + 1),
    )
    assert status == 413 and seconds < QUICK
    assert headers["content-type"].startswith("text/html") and b"Request too large" in body


def test_bodies_within_the_limit_reach_django_declared_or_chunked(server):
    base, _, _ = server
    payload = json.dumps({"name": "x" * (DEFAULT - 100)}).encode()
    status, _, body, _ = exchange(
        base,
        f"POST /api/v1/teams HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
        f"Content-Length: {len(payload)}\n",
        payload,
    )
    assert (
        status == 401 and b"unauthenticated" in body
    )  # the API's refusal of an anonymous write: it got through
    status, _, body, _ = exchange(
        base,
        "POST /api/v1/teams HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\nTransfer-Encoding: chunked\n",
        f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n",
    )
    assert status == 401 and b"unauthenticated" in body


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


@pytest.mark.django_db(transaction=True)
def test_an_upload_route_takes_files_up_to_the_upload_limit_and_refuses_past_it_writing_nothing(
    server, org, team
):
    base, data_dir, _ = server
    owner = actor_for(org["owner"])
    dataset = training_services.create_dataset(
        actor=owner, owner_team=team, name="tickets", kind="completion"
    )
    _, token = personal_tokens.create_personal_token(actor=owner, name="ci", expires_in_days=1)
    row = json.dumps({"prompt": "2+2=", "completion": "4"})
    rows = "\n".join(row.replace("2+2", f"{i}+2") for i in range(3000)).encode()
    assert DEFAULT < len(rows) < UPLOAD
    url = f"/api/v1/datasets/{dataset.pk}/versions"

    def head(content_type: str, length: str) -> str:
        return (
            f"POST {url} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {token}\nContent-Type: {content_type}\n"
            f"{length}\n"
        )

    content_type, body = multipart({}, "rows.jsonl", rows)
    status, _, answer, _ = exchange(base, head(content_type, f"Content-Length: {len(body)}"), body)
    assert status == 202, answer  # past the default limit: an upload route takes more
    training_tasks.ingest_dataset(json.loads(answer)["id"])  # what a worker does with it
    assert DatasetVersion.objects.filter(dataset=dataset).count() == 1

    content_type, body = multipart({}, "big.jsonl", rows * 3)
    assert len(body) > UPLOAD_ROUTE
    status, _, answer, seconds = exchange(base, head(content_type, f"Content-Length: {len(body)}"))
    assert status == 413 and seconds < QUICK and json.loads(answer)["error"]["code"] == "request_too_large"
    parts = chunked(UPLOAD_ROUTE + 1)
    status, _, answer, seconds = exchange(base, head(content_type, "Transfer-Encoding: chunked"), *parts)
    assert status == 413 and seconds < QUICK, answer
    assert DatasetVersion.objects.filter(dataset=dataset).count() == 1
    assert files_under(data_dir / "work") == [] and files_under(data_dir / "uploads") == []


@pytest.mark.django_db(transaction=True)
def test_an_upload_route_takes_more_than_the_default_only_from_a_caller_with_a_credential(
    server, org, team, client
):
    """Django reads a whole body before it looks at who sent it: an anonymous client, or one with a made-up
    token or session cookie, could send 2 GiB to an upload route, spooled to the disk, before being told to
    sign in. Without a valid credential an upload route takes the default limit."""
    base, data_dir, _ = server
    owner = actor_for(org["owner"])
    dataset = training_services.create_dataset(
        actor=owner, owner_team=team, name="tickets", kind="completion"
    )
    content_type, body = multipart({}, "rows.jsonl", b"x" * (DEFAULT + 1024))
    declared = f"Content-Type: {content_type}\nContent-Length: {len(body)}\n"
    api = f"POST /api/v1/datasets/{dataset.pk}/versions HTTP/1.1\nHost: 127.0.0.1\n"
    ui = "POST /models/router/upload/ HTTP/1.1\nHost: 127.0.0.1\n"
    for head in (
        api,
        api + "Authorization: Bearer pat_madeup_0123456789abcdef\n",
        api + "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n",
        ui,
        ui + "Cookie: sessionid=madeupmadeupmadeupmadeupmadeup12\n",
    ):
        status, _, answer, seconds = exchange(base, head + declared)  # and not one byte of the body
        assert status == 413 and seconds < QUICK, (head, answer)
        assert b"signed-in session or a request with a valid token" in answer
    client.force_login(org["engineer"])
    session = client.cookies["sessionid"].value
    status, _, answer, _ = exchange(base, ui + f"Cookie: sessionid={session}\n" + declared, body)
    assert status != 413, answer  # read, and answered by the view

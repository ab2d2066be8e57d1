"""Junk in the Authorization header, on the gateway and on the REST API: oversized, non-ASCII, SQL-ish,
other schemes, a real key's id with a forged secret. Each is a 401 in the route's error shape (OpenAI's on
/v1), answered well under a second (bounded at 5 s here, for a loaded 2-core CI machine, after a warm-up
request: what it guards against is a request stuck on something slow per junk token, a scan or a wait, not
a few milliseconds), and nothing of it is echoed."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

from tests.gateway.conftest import wait_for_model

pytestmark = pytest.mark.django_db(transaction=True)

JUNK: list[bytes] = [
    b"",
    b"Bearer",
    b"Bearer ",
    b"Basic dXNlcjpwYXNzd29yZA==",
    b"bearer slm_",
    b"Bearer slm_' OR '1'='1' --",
    b"Bearer slm_aaaaaaaaaaaa_'; DROP TABLE gateway_apikey; --",
    b"Bearer slm_\xef\xbd\x81\xef\xbd\x82\xef\xbd\x83\xef\xbd\x84\xef\xbd\x85\xef\xbd\x86_"
    + b"x" * 20,  # full-width
    b"Bearer slm_\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9_" + b"x" * 20,  # Latin-1
    b"Bearer pat_aaaaaaaaaaaa_" + b"x" * 40,
    b"Bearer " + b"slm_" + b"A" * 8000,  # oversized
    b"Bearer slm_aaaaaaaaaaaa_" + b"%00" * 10,
    b"Bearer slm_aaaaaaaaaaaa_" + b"x" * 300,
]
# Seconds a round trip may take: far over a loaded runner's worst round trip, far under a request that waits
# on a scan or a queue, which is what it guards against (test hashing is fast MD5, see tests/conftest.py).
SLOW = 5.0


@pytest.fixture
def warm_live_server(live_server):
    """The first request to a live server pays for its start-up; not what is measured."""
    _send(live_server.url, "GET", "/healthz", None)
    return live_server


@pytest.fixture
def warm_gateway(gateway_url):
    """As for the live server: the first request a test makes of the gateway is not what is measured."""
    _send(gateway_url, "GET", "/v1/models", None)
    return gateway_url


def _send(
    base: str, method: str, path: str, authorization: bytes | None, body: bytes = b""
) -> tuple[int, dict, float]:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    started = time.perf_counter()
    connection.putrequest(method, path)
    if authorization is not None:
        connection.putheader(b"Authorization", authorization)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    return response.status, json.loads(data) if data else {}, elapsed


@pytest.mark.parametrize("junk", JUNK, ids=lambda j: repr(j[:30]))
def test_junk_credentials_get_a_quick_openai_shaped_401_from_the_gateway(warm_gateway, junk):
    body = json.dumps({"model": "anything", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for method, path, payload in (
        ("GET", "/v1/models", b""),
        ("POST", "/v1/chat/completions", body),
        ("POST", "/v1/completions", body),
        ("GET", "/v1/models/anything", b""),
    ):
        status, answer, elapsed = _send(warm_gateway, method, path, junk or None, payload)
        assert status == 401, (path, status, answer)
        error = answer["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key", error
        assert set(error) == {"message", "type", "param", "code"}
        secret = junk[7:40].decode("latin-1")
        assert len(secret) < 8 or secret not in error["message"], "the presented secret is never echoed"
        assert elapsed < SLOW, (path, elapsed)


def test_a_real_key_id_with_a_forged_secret_is_a_401(gateway_url, stack):
    dep, engines = stack["deployment"]("junk-dep")
    stack["endpoint"]("junk-ep", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "junk-ep")
    forged = secret[: secret.rindex("_") + 1] + "A" * 43
    status, answer, _ = _send(gateway_url, "GET", "/v1/models", f"Bearer {forged}".encode())
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert engines[0].requests == []


@pytest.mark.parametrize("junk", [j for j in JUNK if j], ids=lambda j: repr(j[:30]))
def test_junk_credentials_get_a_quick_401_in_the_apis_error_shape(warm_live_server, junk):
    for method, path in (("GET", "/api/v1/me"), ("POST", "/api/v1/teams"), ("DELETE", "/api/v1/tokens/1")):
        status, answer, elapsed = _send(
            warm_live_server.url, method, path, junk, b"{}" if method == "POST" else b""
        )
        assert status == 401, (path, status, answer)
        assert answer["error"]["code"] == "unauthenticated" and answer["error"]["request_id"]
        assert elapsed < SLOW, (path, elapsed)

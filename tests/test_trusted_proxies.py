"""Client addresses behind the TLS proxy, on a real `portfolio web` (uvicorn) process.

The proxy here is this test connecting from 127.0.0.2, the one address in PORTFOLIO_TRUSTED_PROXIES; a
client that reaches the server itself connects from 127.0.0.1. Only the proxy's X-Forwarded-For is believed,
and of it only what the proxy added (the right-most address): a gateway key's IP allow-list and the sign-in
lockout see each client's own address behind the proxy, and no client can choose its address.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.db import connection

from portfolio.envparse import database_url
from serving.gateway import services as key_services
from tests.conftest import PASSWORD, actor_for
from tests.web_process import start_web, stop_web

PROXY = "127.0.0.2"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, tmp_path_factory):
    """(host, port) of `portfolio web` trusting the proxy at 127.0.0.2 only."""
    with django_db_blocker.unblock():
        url = database_url(connection.settings_dict)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_TRUSTED_PROXIES": PROXY,
        "PORTFOLIO_LOGIN_FAILURE_LIMIT": "1",  # a client address is locked after 4 failures
        "PORTFOLIO_GATEWAY_REFRESH_MS": "200",
        "PYTHONUNBUFFERED": "1",
    }
    process, port = start_web(env, tmp_path_factory.mktemp("web") / "web.log")
    yield "127.0.0.1", port
    stop_web(process)


def request(
    server,
    method: str,
    path: str,
    *,
    source: str = "127.0.0.1",
    headers: dict | None = None,
    body: str | None = None,
) -> tuple[int, dict, bytes]:
    """One request from the local address ``source``."""
    conn = http.client.HTTPConnection(*server, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def via_proxy(server, method: str, path: str, client: str, **kwargs):
    """As the TLS proxy passes a request on: from its address, the client's appended to X-Forwarded-For."""
    headers = kwargs.pop("headers", {})
    forwarded = headers.pop("X-Forwarded-For", None)
    headers["X-Forwarded-For"] = f"{forwarded}, {client}" if forwarded else client
    headers["X-Forwarded-Proto"] = "https"
    return request(server, method, path, source=PROXY, headers=headers, **kwargs)


@pytest.fixture
def key(org, team) -> str:
    """A team key that may be used from 203.0.113.0/24 only."""
    _key, secret = key_services.create_key(
        actor=actor_for(org["owner"]), team=team, name="office only", allowed_ips=["203.0.113.0/24"]
    )
    time.sleep(0.5)  # past the gateway's key refresh
    return secret


def models(server, secret: str, **kwargs) -> tuple[int, dict]:
    status, _headers, body = kwargs.pop("send", request)(
        server,
        "GET",
        "/v1/models",
        headers={"Authorization": f"Bearer {secret}", **kwargs.pop("headers", {})},
        **kwargs,
    )
    return status, json.loads(body)


def test_a_key_allowed_from_a_client_network_answers_that_client_behind_the_trusted_proxy(web, key):
    status, body = models(web, key, send=via_proxy, client="203.0.113.7")
    assert status == 200, body
    status, body = models(web, key, send=via_proxy, client="198.51.100.9")
    assert (status, body["error"]["code"]) == (403, "ip_not_allowed")


def test_an_address_a_client_writes_into_x_forwarded_for_itself_is_not_believed(web, key):
    # The client claims an allowed address; the proxy appends the one it saw: that one counts.
    status, body = models(
        web, key, send=via_proxy, client="198.51.100.9", headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert (status, body["error"]["code"]) == (403, "ip_not_allowed")
    # A client reaching the server itself is no trusted proxy: its X-Forwarded-For is ignored.
    status, body = models(web, key, source="127.0.0.1", headers={"X-Forwarded-For": "203.0.113.7"})
    assert (status, body["error"]["code"]) == (403, "ip_not_allowed")


def sign_in(web, username: str, password: str, client: str) -> int:
    status, headers, page = via_proxy(web, "GET", "/login/", client)
    assert status == 200
    cookie = SimpleCookie(headers["set-cookie"])["csrftoken"].value
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
    status, _headers, _page = via_proxy(
        web,
        "POST",
        "/login/",
        client,
        headers={
            "Cookie": f"csrftoken={cookie}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Referer": f"https://{web[0]}:{web[1]}/login/",
        },
        body=urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token}),
    )
    return status


def test_failed_sign_ins_behind_the_proxy_lock_out_their_client_address_only(web, make_user, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher"]  # one the server knows
    make_user("colleague")
    attacker, colleague = "198.51.100.1", "198.51.100.2"
    for attempt in range(4):
        assert sign_in(web, f"guess-{attempt}", "wrong password", attacker) == 200
    assert sign_in(web, "colleague", PASSWORD, attacker) == 429
    assert sign_in(web, "colleague", PASSWORD, colleague) == 302  # signed in: another client, not locked out

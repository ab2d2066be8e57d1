"""Calls between the platform's own parts (a worker or the web app to the gateway, a node agent or worker to an
engine), made directly: never through a proxy named by ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY``.

Workers and node agents may run with a corporate proxy in their environment (for the Hub, see README.md);
the URLs called here are compose service names and private addresses that ``NO_PROXY`` seldom lists, and
every call carries a key (a team's service key, a playground ticket, an engine key) and prompts that a proxy
must never see. Both clients the platform calls with read proxies from the environment by default: urllib's
``urlopen`` and httpx (``trust_env``). Certificates are still checked as httpx checks them when it trusts the
environment: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` if set (a private CA of an https gateway URL), else certifi.
"""

from __future__ import annotations

import functools
import ssl
import urllib.request
from typing import Any

import httpx

# Every default handler but the environment's proxies (an empty ProxyHandler replaces the default one).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen(request: urllib.request.Request, timeout: float):
    """``urllib.request.urlopen`` without a proxy: the same response, the same errors (``HTTPError`` ...)."""
    return _OPENER.open(request, timeout=timeout)


@functools.cache
def _verify() -> ssl.SSLContext:
    # Read once, as the environment is at start-up; one context shared by every client (thread-safe).
    return httpx.create_ssl_context(trust_env=True)


def httpx_options() -> dict[str, Any]:
    """Keyword arguments of an ``httpx.Client`` or ``httpx.post``: no proxy, no other setting from the
    environment, certificates verified as before."""
    return {"trust_env": False, "verify": _verify()}

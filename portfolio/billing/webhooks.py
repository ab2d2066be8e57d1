"""Budget alert webhooks: a signed JSON POST to an address a team owner chose, which must not reach inside.

The body is signed (``signature``: HMAC-SHA256 under ``WEBHOOK_SECRET``, in ``X-Portfolio-Signature``). The
host is resolved once and every address connected to is checked to be global first (``_connect``), unless
``BILLING_WEBHOOK_PRIVATE_HOSTS``: a name checked, then resolved again to connect, could answer a public address
to the check and 127.0.0.1 to the connection (DNS rebinding). No redirect is followed and no proxy from the
environment used (the address checked would be the proxy's). ``post`` bounds the whole call.

Where alerts may go at all is the operator's (``refusal``): with ``BILLING_WEBHOOK_HOSTS`` set, only to the hosts
it lists, which are then called even at internal addresses (an admin named them); unset, nowhere in production.
Delivery asks again, so that a URL set before the list (or under a wider one) is not called.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request

from django.conf import settings
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Portfolio-Signature"


def signature(body: bytes, secret: bytes | None = None) -> str:
    """The value of the signature header: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    key = settings.WEBHOOK_SECRET if secret is None else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could point the signed POST anywhere (an internal host the URL check refused).
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class InternalAddress(OSError):
    """The webhook's host resolves to an address that is not global: refused before connecting."""


# IPv6 prefixes that carry an IPv4 address a gateway on the way may translate to: the well-known NAT64 prefix
# (RFC 6052), 6to4 (RFC 3056) and IPv4-compatible addresses. Python 3.11 counts them global whatever the IPv4
# address they carry (64:ff9b::7f00:1 is 127.0.0.1 behind a NAT64 gateway).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: for local use, never global
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def is_global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is reachable on the public internet, judging an IPv6 address that carries an IPv4 one
    by the IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _NAT64 or ip in _IPV4_COMPATIBLE):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded.is_global
    return ip.is_global


def listed(host: str, entries: list[str]) -> bool:
    """Whether ``host`` is one of ``entries``, or under one written ``.domain`` (the domain and its hosts, as
    DJANGO_ALLOWED_HOSTS reads it); no wildcard."""
    host = _name(host)
    return any(is_same_domain(host, _name(entry)) for entry in entries if entry.strip(".[]"))


def _name(host: str) -> str:
    # As urlsplit gives a host: lower case, an IPv6 address without its brackets; and without the root's dot.
    return host.lower().strip("[]").rstrip(".")


def refusal(host: str) -> str | None:
    """Why no alert is POSTed to ``host`` (in words naming the setting), or None when one may be: nothing leaves
    for a host the operator did not list, and in production nothing at all until they list some."""
    if settings.BILLING_WEBHOOK_HOSTS:
        if listed(host, settings.BILLING_WEBHOOK_HOSTS):
            return None
        return f"{host} is not a host PORTFOLIO_BILLING_WEBHOOK_HOSTS allows alerts to go to."
    if settings.PRODUCTION:
        return "webhooks are off in production until PORTFOLIO_BILLING_WEBHOOK_HOSTS lists where they go."
    return None


def email_refusal(address: str) -> str | None:
    """Why no alert is e-mailed to ``address``, typed in for a budget (in words naming the setting), or None:
    only to the domains the operator listed, and in production to none until they list some. Asked when the
    address is set and again at each delivery (it may have been set before the list). The owners' and
    managers' own accounts' addresses, where alerts go without any typed in, are not bound by it."""
    domains = settings.BILLING_ALERT_EMAIL_DOMAINS
    if domains:
        if listed(address.rpartition("@")[2], domains):
            return None
        return f"{address!r} is outside the domains PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS allows."
    if settings.PRODUCTION:
        return (
            "alerts go to no address typed in until PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS lists its domains; "
            "leave it empty for the owners' (or managers') own addresses."
        )
    return None


def _is_global(address: str) -> bool:
    return is_global(ipaddress.ip_address(address.split("%")[0]))  # an IPv6 address may carry its zone


def _connect(address: tuple[str, int], timeout: object = None, source_address=None) -> socket.socket:
    """socket.create_connection, resolving the host once: the addresses checked are the addresses
    connected to. A name checked and then resolved again to connect could answer a public address to
    the check and 127.0.0.1 to the connection (DNS rebinding); a name set when it pointed outside may
    point inside by now."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    internal_allowed = settings.BILLING_WEBHOOK_PRIVATE_HOSTS or listed(host, settings.BILLING_WEBHOOK_HOSTS)
    if not internal_allowed and not all(_is_global(str(i[4][0])) for i in infos):
        raise InternalAddress(f"{host} resolves to an internal address")
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is None or isinstance(timeout, int | float):  # else the default timeout stays
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _opened(sock: socket.socket | None) -> None:
    sockets = getattr(_OPENED, "sockets", None)
    if sockets is not None and sock is not None:
        sockets.append(sock)


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _connect  # what connect() calls with (host, port)

    def connect(self) -> None:
        super().connect()
        _opened(self.sock)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    # The TLS layer still verifies the certificate against the URL's host name (SNI and check_hostname
    # use self.host), only the TCP connection goes to the checked address.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _connect

    def connect(self) -> None:
        super().connect()
        _opened(self.sock)  # the TLS socket: shutting it ends a read blocked in TLS too


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_CheckedHTTPConnection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext):
        super().__init__(context=context)
        self.context = context

    def https_open(self, req):
        return self.do_open(_CheckedHTTPSConnection, req, context=self.context)


def opener(context: ssl.SSLContext) -> urllib.request.OpenerDirector:
    """What webhooks are POSTed with: http(s) only, no redirect, each address connected to checked first;
    certificates verified by ``context``. No proxy from the environment: through one, the address
    connected to would be the proxy's, and the check would check the wrong host."""
    return urllib.request.build_opener(
        _NoRedirects,
        urllib.request.ProxyHandler({}),
        _CheckedHTTPHandler,
        _CheckedHTTPSHandler(context=context),
    )


_OPENER = opener(ssl.create_default_context())
# The sockets each delivery's thread has opened, for ``post`` to shut when its deadline passes.
_OPENED = threading.local()


def post(url: str, payload: dict) -> str:
    """POST ``payload`` signed; how it went, in words. The whole call, not each read, is bounded by
    ``BILLING_WEBHOOK_TIMEOUT`` (and a second to connect): a receiver answering a byte at a time held the
    budget check for as long as it liked. It runs in a thread whose sockets are shut at the deadline."""
    if refused := refusal(_host(url)):
        return f"failed: {refused} Not called."[:300]
    outcome: list[str] = []
    opened: list[socket.socket] = []

    def deliver() -> None:
        _OPENED.sockets = opened
        outcome.append(_post(url, payload))

    thread = threading.Thread(target=deliver, name="budget-webhook", daemon=True)
    thread.start()
    thread.join(settings.BILLING_WEBHOOK_TIMEOUT + 1)
    if thread.is_alive():
        for sock in list(opened):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        logger.warning("billing: budget webhook to %s gave no whole answer in time", _host(url))
        return f"failed: no whole answer within {settings.BILLING_WEBHOOK_TIMEOUT} s"
    return outcome[0] if outcome else "failed: the delivery stopped"


def _host(url: str) -> str:
    """What a log line names of a webhook: its host. Slack's and Teams' URLs carry their credentials in the
    path or the query, and logs are read by more people than budgets are."""
    return urllib.parse.urlsplit(url).hostname or "(no host)"


def _post(url: str, payload: dict) -> str:
    body = json.dumps(payload, sort_keys=True).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL was checked to be http(s) when set
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Portfolio-Budget-Alerts",
            SIGNATURE_HEADER: signature(body),
        },
    )
    try:
        with _OPENER.open(request, timeout=settings.BILLING_WEBHOOK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except Exception as exc:  # noqa: BLE001 - refused, timed out, bad TLS: recorded, never raised
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, InternalAddress):
            return "failed: the host is an internal address; not called"
        logger.warning("billing: budget webhook to %s failed: %s", _host(url), exc)
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return f"sent: HTTP {status}" if 200 <= status < 300 else f"failed: HTTP {status}"

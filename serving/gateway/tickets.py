"""Playground tickets: the short-lived credential with which the deployment page's prompt box calls a
deployment through the gateway, metered and rate-limited like any other call.

A deployment may have no endpoint, so the prompt box cannot use an API key: keys reach endpoints only.
The web process, having checked ``endpoint.call`` on the deployment, signs a ticket that names the
deployment, the one model of it (base or adapter) to call, its team and the user, valid for ``TTL``
seconds. The gateway verifies the signature (HMAC-SHA256 under a key derived from the token-hash secret,
no database) and then serves that model of that deployment and nothing else; ordinary API keys can never
reach a deployment by name. Tickets carry no limits of their own: the gateway applies the playground's
per-user rate limits (``PLAYGROUND_RPM`` / ``PLAYGROUND_TPM``).

A ticket never leaves the server (the browser only posts the prompt to the web process) and is never
logged or stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from functools import lru_cache

import orjson
from django.conf import settings

PREFIX = "slmt_"
TTL = 120  # seconds: one prompt box call, its retries while a new replica enters the routing table
MAX_LENGTH = 500
PLAYGROUND_ENDPOINT = "(playground)"  # the endpoint of its usage events: not a name an endpoint can take


@dataclass(frozen=True)
class Ticket:
    deployment: str
    model: str
    team_id: int
    team: str
    department_id: int
    user_id: int
    expires_at: float


@lru_cache(maxsize=1)
def _key() -> bytes:
    return hmac.new(settings.TOKEN_HASH_KEY, b"playground-ticket", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(payload: str) -> str:
    return _b64(hmac.new(_key(), payload.encode(), hashlib.sha256).digest())


def mint(
    *,
    deployment: str,
    model: str,
    team_id: int,
    team: str,
    department_id: int,
    user_id: int | None,
    now: float | None = None,
) -> str:
    expires = int((now or time.time()) + TTL)
    payload = _b64(orjson.dumps([1, deployment, model, team_id, team, department_id, user_id or 0, expires]))
    return f"{PREFIX}{payload}.{_sign(payload)}"


def verify(presented: str, now: float | None = None) -> Ticket | None:
    """The ticket if ``presented`` is one we signed and it has not expired; never raises on garbage."""
    if len(presented) > MAX_LENGTH or not presented.startswith(PREFIX) or not presented.isascii():
        return None
    payload, _, signature = presented[len(PREFIX) :].partition(".")
    if not hmac.compare_digest(signature.encode(), _sign(payload).encode()):
        return None
    try:
        version, deployment, model, team_id, team, department_id, user_id, expires = orjson.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        )
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        return None
    if version != 1 or expires <= (now or time.time()):
        return None
    return Ticket(deployment, model, team_id, team, department_id, user_id, float(expires))

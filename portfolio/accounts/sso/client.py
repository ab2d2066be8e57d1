"""The OpenID Connect authorization code flow against a Keycloak realm, through python-keycloak.

Contract: nothing here trusts the browser. A sign-in starts with a fresh ``state`` (bound to the session by
the caller), ``nonce`` and PKCE verifier (S256); the code is exchanged by this server with the client secret
and the verifier; the ID token is accepted only when signed by one of the realm's keys with an asymmetric
algorithm (``alg: none`` and shared-secret algorithms are refused), issued by the realm, for this client,
unexpired and carrying the nonce of this sign-in. Any other answer raises ``Refused``, whose ``reason`` goes
into the audit row and whose ``message`` is shown to the person signing in (never a token or a secret).

The realm's discovery document and keys are cached (an hour); an ID token signed with a key id not in the
cache refetches the keys, at most once a minute, so that Keycloak's key rotation is followed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.core.cache import cache
from jwcrypto import jwk
from jwcrypto.common import JWException, JWKeyNotFound
from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakConnectionError, KeycloakError

from portfolio.accounts.sso.config import OidcConfig

logger = logging.getLogger(__name__)

# Keycloak signs with RS256 by default; a realm may choose another asymmetric one. Never HS* (the client
# secret would become a signing key) and never "none".
SIGNING_ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
SCOPE = "openid email profile"
CACHE_SECONDS = 3600
KEY_REFRESH_SECONDS = 60
TIMEOUT_SECONDS = 10
LEEWAY_SECONDS = 30  # clock skew allowed for exp, nbf and iat


class Refused(Exception):
    """A sign-in that must not go on: ``reason`` for the audit trail, ``message`` for the person, and the
    user name it concerns when one is known."""

    def __init__(self, reason: str, message: str, username: str = "") -> None:
        super().__init__(reason)
        self.reason, self.message, self.username = reason, message, username


@dataclass(frozen=True)
class Pending:
    """What the session keeps between sending the browser to the realm and its coming back."""

    state: str
    nonce: str
    code_verifier: str


def _openid(config: OidcConfig) -> KeycloakOpenID:
    return KeycloakOpenID(
        server_url=config.server_url,
        realm_name=config.realm,
        client_id=config.client_id,
        client_secret_key=config.client_secret,
        timeout=TIMEOUT_SECONDS,
    )


@functools.lru_cache(maxsize=4)
def _verifier(config: OidcConfig) -> KeycloakOpenID:
    """A client kept for verifying tokens, which does no I/O: making one costs tens of milliseconds (its HTTP
    clients), too much for every REST API call that bears an access token."""
    return _openid(config)


def _unavailable(config: OidcConfig) -> Refused:
    return Refused(
        "provider_unavailable",
        f"{config.organisation} cannot be reached right now. Try again in a moment.",
    )


def _cache_key(config: OidcConfig, what: str) -> str:
    return f"sso:{what}:{hashlib.sha256(config.realm_url.encode()).hexdigest()[:24]}"


def _fetched(
    config: OidcConfig, what: str, fetch, needed: tuple[str, ...], *, refresh: bool = False
) -> dict[str, Any]:
    """A document of the realm (``fetch(KeycloakOpenID)``), cached ``CACHE_SECONDS`` unless ``refresh``.
    One that is no JSON object with the ``needed`` keys (a proxy's or maintenance page's 200: python-keycloak
    raises TypeError on a body that is no object) is the realm unavailable, and is not cached."""
    key = _cache_key(config, what)
    document = None if refresh else cache.get(key)
    if document is None:
        try:
            document = fetch(_openid(config))
        except (KeycloakError, ValueError, TypeError) as exc:
            raise _unavailable(config) from exc
        if not isinstance(document, dict) or any(name not in document for name in needed):
            logger.warning("the realm's %s document lacks %s: taken for the realm unavailable", what, needed)
            raise _unavailable(config)
        cache.set(key, document, CACHE_SECONDS)
    return document


def discovery(config: OidcConfig) -> dict[str, Any]:
    """The realm's ``.well-known/openid-configuration``, cached."""
    return _fetched(config, "discovery", KeycloakOpenID.well_known, ("issuer", "authorization_endpoint"))


def _keys(config: OidcConfig, *, refresh: bool = False) -> jwk.JWKSet:
    document = _fetched(config, "jwks", KeycloakOpenID.certs, ("keys",), refresh=refresh)
    keys = jwk.JWKSet()
    for entry in document.get("keys", []):
        if entry.get("use", "sig") == "sig":
            keys.add(jwk.JWK(**entry))
    return keys


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def start(config: OidcConfig, redirect_uri: str) -> tuple[str, Pending]:
    """The realm's authorization URL for a new sign-in, and what to keep in the session until it returns."""
    pending = Pending(
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(64),
    )
    # Built here rather than by KeycloakOpenID.auth_url, which puts the redirect URI and scope into the
    # query string unencoded.
    query = urlencode(
        {
            "client_id": config.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": SCOPE,
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": _challenge(pending.code_verifier),
            "code_challenge_method": "S256",
        }
    )
    return f"{discovery(config)['authorization_endpoint']}?{query}", pending


def exchange(config: OidcConfig, *, code: str, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
    """The realm's tokens for an authorization code (refused if the code is used, expired or not ours)."""
    try:
        return _openid(config).token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
        )
    except (KeycloakConnectionError, TypeError) as exc:  # TypeError: a 200 whose body is no JSON object
        raise _unavailable(config) from exc
    except KeycloakError as exc:
        raise Refused(
            "code_refused",
            f"{config.organisation} did not accept this sign-in (it may have been used already). "
            "Please sign in again.",
        ) from exc


def _header(token: str) -> dict[str, Any]:
    try:
        encoded = token.split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, IndexError) as exc:
        raise ValueError("not a JSON Web Token") from exc
    if not isinstance(header, dict):
        raise ValueError("not a JSON Web Token")
    return header


def _in_time(claims: dict[str, Any], refuse) -> dict[str, Any]:
    """``exp`` and ``nbf`` checked whenever present: jwcrypto checks them only when ``check`` names them
    (a logout token's ``exp`` is optional, but an expired one must not pass)."""
    now = time.time()
    if any(not isinstance(claims.get(name, 0), int | float) for name in ("exp", "nbf")):
        raise refuse("malformed")
    if "exp" in claims and claims["exp"] < now - LEEWAY_SECONDS:
        raise refuse("expired")
    if "nbf" in claims and claims["nbf"] > now + LEEWAY_SECONDS:
        raise refuse("not valid yet")
    return claims


def verify_jwt(config: OidcConfig, token: str, check: dict[str, Any], refuse) -> dict[str, Any]:
    """A JWT's claims, once signed by one of the realm's keys with an asymmetric algorithm and its
    ``check`` claims (jwcrypto's ``check_claims``: ``None`` means present) hold. ``refuse(detail)`` makes
    the ``Refused`` raised otherwise. Used for ID tokens, logout tokens and API access tokens."""
    try:
        header = _header(token)
    except ValueError as exc:
        raise refuse("malformed") from exc
    if header.get("alg") not in SIGNING_ALGORITHMS:
        raise refuse(f"algorithm {str(header.get('alg'))[:20]!r} not accepted")
    openid = _verifier(config)
    for refresh in (False, True):
        try:
            claims = openid.decode_token(
                token,
                key=_keys(config, refresh=refresh),
                check_claims=check,
                algs=SIGNING_ALGORITHMS,
                expected_type="JWS",
                leeway=LEEWAY_SECONDS,
            )
            return _in_time(claims, refuse)
        except JWKeyNotFound as exc:
            # A key id we have not seen: the realm may have rotated its keys. Refetched at most once a
            # minute, so that tokens with made-up key ids cannot make us hammer the realm.
            if refresh or not cache.add(_cache_key(config, "jwks-refreshed"), 1, KEY_REFRESH_SECONDS):
                raise refuse("signed by an unknown key") from exc
            continue
        except JWException as exc:
            # jwcrypto's text goes on to the value it expected (the sign-in's nonce): the audit row, which
            # auditors read, gets the claim it is about, not the value.
            raise refuse(str(exc).split(" Expected ")[0][:80] or type(exc).__name__) from exc
        except ValueError as exc:
            raise refuse("malformed") from exc
    raise refuse("signed by an unknown key")  # not reached: the second pass returns or raises


def verify_id_token(config: OidcConfig, id_token: str, *, nonce: str) -> dict[str, Any]:
    """The ID token's claims, once its signature, issuer, audience, expiry and nonce are checked."""

    def refuse(detail: str) -> Refused:
        return Refused(
            f"id_token_invalid: {detail}"[:120],
            f"The answer from {config.organisation} could not be verified, so you were not signed in.",
        )

    check = {
        "iss": discovery(config)["issuer"],
        "aud": config.client_id,
        "exp": None,
        "iat": None,
        "sub": None,
        "nonce": nonce,
    }
    claims = verify_jwt(config, id_token, check, refuse)
    audience = claims.get("aud")
    # With more than one audience, the token must name this client as the party it was issued to.
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != config.client_id:
        raise refuse("issued to another party")
    return claims

"""Keycloak access tokens on the REST API: ``Authorization: Bearer <JWT>`` for scripts and CI jobs.

Contract: a token is accepted only when ``client.verify_jwt`` finds it signed by one of the realm's keys with
an asymmetric algorithm (``alg: none`` and shared-secret algorithms are refused), issued by the realm, for
the API's audience (``PORTFOLIO_OIDC_API_AUDIENCE``, the client id by default; it may be one of several),
unexpired, valid already (``nbf``), when it says what it is (Keycloak's ``typ``) a ``Bearer`` token (not an
ID or refresh token), and issued to one of the clients the API takes tokens from (``azp``,
``PORTFOLIO_OIDC_API_CLIENTS``: any client of the realm can name this API's audience and put any claim in
its tokens, so the clients whose claims are believed are named). It then acts as the user of its issuer and subject, exactly as that user's
browser session would: a Keycloak service account (``service-account-<client>``) is such a user too, made
just in time on its first call, to which admins give teams like anyone else.

Each call costs the cached keys' verification, one query (the identity) and one cache write. The first call
of a subject goes through ``services.account_for`` (which creates the user and its audit row), and so does
the first call of each later token, which applies the mapping rules to its claims as a sign-in does; other
calls with a token write nothing and audit nothing. A refusal is a 401 that says why, never repeating the
token.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time

from django.core.cache import cache
from django.db import IntegrityError

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import ExternalIdentity
from portfolio.accounts.sso import client, services
from portfolio.accounts.sso import config as sso_config
from portfolio.errors import Unauthenticated, Unavailable

logger = logging.getLogger(__name__)

# Three base64url segments (the last empty for ``alg: none``, refused below with its reason).
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Keycloak's ``typ`` claim of an access token; its ID, refresh and logout tokens say otherwise.
ACCESS_TOKEN_TYPE = "Bearer"


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer token is a JWT (a realm's access token) rather than a personal token."""
    return not token.startswith("pat_") and _JWT.fullmatch(token) is not None


# What the verification's details mean to the caller (jwcrypto's messages, verify_jwt's own).
_PLAIN = [
    ("Expired", "it has expired"),
    ("not valid yet", "it is not valid yet (nbf)"),
    ("Invalid 'aud'", "it is not for this API (aud)"),
    ("Invalid 'iss'", "it was not issued by the realm (iss)"),
    ("Claim ", "a required claim is missing ({detail})"),
    ("signed by an unknown key", "it is not signed by one of the realm's keys"),
    ("algorithm", "its signing algorithm is not accepted ({detail})"),
    ("malformed", "it is not a well-formed JSON Web Token"),
]


def _refused(detail: str) -> Unauthenticated:
    """The 401 for a token that failed verification. ``detail`` names a claim, a time or an algorithm,
    never the token itself."""
    logger.info("API access token refused: %s", detail)
    plain = next((text for prefix, text in _PLAIN if detail.startswith(prefix)), "{detail}")
    return Unauthenticated(f"The access token was refused: {plain.format(detail=detail)}.")


def _unavailable(config: sso_config.OidcConfig) -> Unavailable:
    return Unavailable(f"The access token cannot be verified now: {config.organisation} cannot be reached.")


def claims_of(config: sso_config.OidcConfig, token: str, issuer: str) -> dict:
    """The verified claims of the realm's access token for this API (see the module docstring)."""
    check = {"iss": issuer, "aud": config.audience, "exp": None, "sub": None}

    def refuse(detail: str) -> client.Refused:
        return client.Refused(f"access_token_invalid: {detail}"[:120], detail)

    try:
        claims = client.verify_jwt(config, token, check, refuse)
    except client.Refused as refusal:
        if refusal.reason == "provider_unavailable":
            raise _unavailable(config) from refusal
        raise _refused(refusal.message) from refusal
    token_type = claims.get("typ")
    if token_type is not None and token_type != ACCESS_TOKEN_TYPE:
        raise _refused(f"it is not an access token (typ {str(token_type)[:20]!r})")
    party = claims.get("azp")
    if party not in config.token_clients:
        shown = repr(party[:64]) if isinstance(party, str) else "no client (azp)"
        raise _refused(
            f"it was issued to {shown}, not to a client this API takes tokens from (PORTFOLIO_OIDC_API_CLIENTS)"
        )
    return claims


def _first_call(request, config: sso_config.OidcConfig, issuer: str, claims: dict):
    """``account_for``; when a concurrent first call of the same subject made the account meanwhile (two
    CI jobs starting together), the account it made."""
    try:
        return services.account_for(
            actor=Actor.for_request(request), issuer=issuer, claims=claims, organisation=config.organisation
        )
    except IntegrityError:
        identity = (
            ExternalIdentity.objects.select_related("user")
            .filter(issuer=issuer, subject=str(claims["sub"]))
            .first()
        )
        if identity is None or not identity.user.is_active:
            raise
        return identity.user


def _first_use(issuer: str, claims: dict) -> bool:
    """Whether this is the first call with this token (its subject's, by its ``jti``, else its issue time),
    remembered until it expires: later calls with it read the account as it is, with no write."""
    token_id = f"{issuer}\n{claims['sub']}\n{claims.get('jti') or claims.get('iat') or ''}"
    key = "sso:token-mapped:" + hashlib.sha256(token_id.encode()).hexdigest()
    lifetime = int(claims.get("exp", 0)) - int(time.time())
    return cache.add(key, 1, timeout=max(1, min(lifetime, 86_400)))


def signature_holds(token: str) -> bool:
    """Whether ``token`` is an access token of the realm, signed, current and for an allowed client, and not
    of an account deactivated here: no account is made or changed (``authenticate`` does that), for checks
    made before the request is read. A subject with no account yet passes (its first call makes one)."""
    config = sso_config.current()
    if config is None:
        return False
    try:
        issuer = client.discovery(config)["issuer"]
        claims = claims_of(config, token, issuer)
    except (Unauthenticated, Unavailable, client.Refused):
        return False
    return not ExternalIdentity.objects.filter(
        issuer=issuer, subject=str(claims["sub"]), user__is_active=False
    ).exists()


def authenticate(request, token: str) -> Actor:
    """The caller of an API request bearing the realm's access token; ``Unauthenticated`` otherwise."""
    config = sso_config.current()
    if config is None:
        raise Unauthenticated(
            "Access tokens from single sign-on are not accepted: it is not set up on this platform. "
            "Use a personal token (pat_...)."
        )
    try:
        issuer = client.discovery(config)["issuer"]
    except client.Refused as exc:
        raise _unavailable(config) from exc
    claims = claims_of(config, token, issuer)
    identity = (
        ExternalIdentity.objects.select_related("user")
        .filter(issuer=issuer, subject=str(claims["sub"]))
        .first()
    )
    if identity is not None and not identity.user.is_active:
        logger.info("API access token refused: user_inactive")
        raise Unauthenticated(
            "The access token was refused: its account is deactivated here. Ask a platform admin."
        )
    first_use = _first_use(issuer, claims)
    if identity is None or first_use:
        # The first call of this subject makes its account just in time, as a first sign-in would (and
        # audited so); the first call of each later token applies the mapping rules to its claims, as each
        # sign-in does. A service account never signs in and the directory sync cannot see it: without
        # this, roles taken from it in the realm would stay here for good.
        try:
            user = _first_call(request, config, issuer, claims)
        except client.Refused as refusal:
            logger.info("API access token refused: %s", refusal.reason)
            raise Unauthenticated(f"The access token was refused. {refusal.message}") from refusal
    else:
        user = identity.user
    request.user = user
    actor = Actor.for_request(request)
    actor.access_token = True  # audited as such, and no personal token can be minted with it
    return actor

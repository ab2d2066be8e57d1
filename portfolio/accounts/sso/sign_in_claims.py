"""What a browser sign-in's mapping rules are applied to: the ID token's claims, completed from the access
token the same exchange returned.

Keycloak's default ``roles`` client scope puts ``realm_access`` and ``resource_access`` into the access token
only, and groups reach an ID token only through a mapper (``mapping``'s docstring). With a realm that lacks
those mappers (one made before ``deploy/keycloak`` added them), the ID token said nothing of client roles:
a role given or taken in Keycloak reached this platform only at the next directory sync. The access token of
the same exchange says it at the sign-in.

Contract: a claim the ID token carries is its own (the access token never overrides it); of the access
token only ``groups``, ``realm_access`` and ``resource_access`` are taken, and only once it is verified as an
API access token is (``client.verify_jwt``: signed by the realm's keys, its issuer, unexpired), names the same
subject, was issued to this client (``azp``) and is not another kind of token (``typ``). An access token that
is not a JWT, or fails any check, is not used (logged): the sign-in goes on with the ID token's claims alone,
as before.
"""

from __future__ import annotations

import logging
from typing import Any

from portfolio.accounts.sso import client
from portfolio.accounts.sso.access_tokens import ACCESS_TOKEN_TYPE
from portfolio.accounts.sso.config import OidcConfig
from portfolio.accounts.sso.mapping import CLAIM_OF_KIND

logger = logging.getLogger(__name__)


def completed(
    config: OidcConfig, tokens: dict[str, Any], claims: dict[str, Any], issuer: str
) -> dict[str, Any]:
    """``claims`` (verified ID token claims) with the rule claims it leaves out taken from the exchange's
    access token, where that token passes the checks above."""
    missing = [name for name in CLAIM_OF_KIND.values() if name not in claims]
    token = tokens.get("access_token")
    if not missing or not isinstance(token, str) or token.count(".") != 2:
        return claims
    access = _verified(config, token, issuer, subject=str(claims["sub"]))
    if access is None:
        return claims
    return {**claims, **{name: access[name] for name in missing if name in access}}


def _verified(config: OidcConfig, token: str, issuer: str, *, subject: str) -> dict[str, Any] | None:
    def refuse(detail: str) -> client.Refused:
        return client.Refused(f"access_token_invalid: {detail}"[:120], detail)

    try:
        access = client.verify_jwt(config, token, {"iss": issuer, "exp": None, "sub": subject}, refuse)
    except client.Refused as refusal:
        logger.warning("sso: the sign-in's access token was not used for roles: %s", refusal.message)
        return None
    if access.get("azp") != config.client_id or access.get("typ", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        logger.warning(
            "sso: the sign-in's access token was not used for roles: not this client's access token"
        )
        return None
    return access

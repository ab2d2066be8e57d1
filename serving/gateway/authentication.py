"""Who calls: the API key of a request, checked from memory (keycache.py), or a playground ticket.

A key is never looked up in PostgreSQL per request; a revoked key is refused at once through the revocation
set in Redis, which admission checks and the model listing checks here.
"""

from __future__ import annotations

from django.conf import settings

from serving.gateway import keystate, tickets
from serving.gateway.errors import GatewayError
from serving.gateway.keycache import KeyCache, KeyRecord, LookupBusy

MAX_AUTH_HEADER = 512


async def authenticate(
    keys: KeyCache, headers: dict, scope, *, tickets_allowed: bool = False
) -> tuple[KeyRecord, tickets.Ticket | None]:
    """The key (or playground ticket) a request presents, from the in-memory cache."""
    raw = headers.get(b"authorization", b"")
    if not raw or len(raw) > MAX_AUTH_HEADER or not raw[:7].lower() == b"bearer ":
        raise GatewayError(
            401, "Missing or malformed API key: send `Authorization: Bearer slm_…`.", "invalid_api_key"
        )
    presented = raw[7:].strip().decode("latin-1")
    if tickets_allowed and presented.startswith(tickets.PREFIX):
        ticket = tickets.verify(presented)
        if ticket is None:
            raise GatewayError(401, "Invalid or expired playground ticket.", "invalid_api_key")
        return ticket_key(ticket), ticket
    try:
        key = await keys.authenticate(presented)
    except LookupBusy:
        raise GatewayError(
            503,
            "Too many API keys are being checked at once; retry in a moment.",
            "key_lookup_busy",
            retry_after=1,
        ) from None
    if key is None:
        raise GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
    client = scope.get("client")
    if not key.allows_ip(client[0] if client else None):
        error = GatewayError(403, "This API key may not be used from this address.", "ip_not_allowed")
        error.team = key.team
        raise error
    return key, None


async def authenticate_listing(keys: KeyCache, pipe, headers: dict, scope) -> KeyRecord:
    """The key of a /v1/models call, checked against the revocation set too (as admission does)."""
    key, _ = await authenticate(keys, headers, scope)
    (revoked,) = await pipe.execute(("ZSCORE", keystate.REVOKED_SET, key.key_id))
    if isinstance(revoked, Exception):
        raise revoked
    if revoked is not None:
        keys.evict(key.key_id)
        raise GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
    return key


def ticket_key(ticket: tickets.Ticket) -> KeyRecord:
    """A playground ticket as a key: its team's, limited per user by the playground's own limits."""
    return KeyRecord(
        pk=0,
        key_id=f"playground-{ticket.user_id}",
        secret_hash="",
        team_id=ticket.team_id,
        team=ticket.team,
        department_id=ticket.department_id,
        scopes=frozenset(),
        networks=(),
        rpm_limit=settings.PLAYGROUND_RPM,
        tpm_limit=settings.PLAYGROUND_TPM,
        monthly_token_budget=None,
        monthly_budget_micros=None,
        expires_at=ticket.expires_at,
        revoked=False,
    )

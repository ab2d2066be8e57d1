"""Ending single sign-on sessions, from either side.

A session made by single sign-on keeps the ID token (sent back as ``id_token_hint``) and the realm's session
id (``sid``), and is recorded as an ``SsoSession`` (``remember``). Signing out here also ends the session at
the realm: the browser goes to the realm's ``end_session_endpoint`` (``end_session_url``; OpenID Connect
RP-Initiated Logout) and comes back to the sign-in page.

Signing out at the realm (or the realm ending a session) reaches this platform as a back-channel logout
(OpenID Connect Back-Channel Logout 1.0): a logout token POSTed by the realm. It is trusted only when
signed by one of the realm's keys (``client.verify_jwt``), issued by the realm for this client, recent, not
expired, carrying the back-channel logout event and a ``sid`` or ``sub``, no ``nonce`` (an ID token must
not pass for one) and a ``jti`` not seen before; then every session of that ``sid`` (or, with only ``sub``,
every single sign-on session of that person) is deleted and audited as ``user.logout`` by the realm.

Django changes a session's key without telling anyone (``cycle_key``: ``auth.get_user`` does it when the
session verifies only with a key of ``SECRET_KEY_FALLBACKS``, after a secret rotation). The session keeps the
key its record was made under (``RECORDED_KEY``), and ``follow``, run after each request that read the
session (``accounts.middleware.SsoSessionKeyMiddleware``), moves the record to the new key: else the realm's
logout would name a key that no longer exists, and end nothing. It costs nothing for a session not made by
single sign-on, and one query only when the key has changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from datetime import timedelta
from importlib import import_module
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.models import Session  # the platform keeps sessions in its database
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import SsoSession
from portfolio.accounts.sso import client
from portfolio.accounts.sso.config import OidcConfig
from portfolio.audit import services as audit

# What a session made by single sign-on keeps for signing out (ID tokens are short-lived, but the realm
# accepts an expired one as a hint).
ID_TOKEN = "sso.id_token"
SID = "sso.sid"
# The session key its ``SsoSession`` is recorded under, to notice that Django has changed it.
RECORDED_KEY = "sso.session_key"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# A logout token issued longer ago than this is refused; one without ``exp`` has its ``jti`` kept as long.
MAX_AGE_SECONDS = 600
LEEWAY_SECONDS = client.LEEWAY_SECONDS
# The actor of a back-channel logout in the audit trail: "system:keycloak".
REALM_ACTOR = "keycloak"
METHOD = "backchannel"


def remember(session: SessionBase, *, user, issuer: str, claims: dict[str, Any], id_token: str) -> SsoSession:
    """Keep, in a session just made by single sign-on, what signing out needs, and record it under its key
    for the realm's back-channel logout. Records of sessions that have since expired are dropped."""
    sid = str(claims.get("sid") or "")[:255]
    session[ID_TOKEN] = id_token
    session[SID] = sid
    if session.session_key is None:
        session.save()
    _drop_ended()
    record, _ = SsoSession.objects.update_or_create(
        session_key=session.session_key,
        defaults={
            "sid": sid,
            "user": user,
            "issuer": issuer[:255],
            "subject": str(claims["sub"])[:255],
            "created_at": timezone.now(),
        },
    )
    session[RECORDED_KEY] = session.session_key
    return record


def _drop_ended() -> None:
    """Drop the records of sessions that have ended. One whose session has expired goes at once. One whose
    session is gone goes once it is older than ``SESSION_COOKIE_AGE`` (a session signed out here takes its
    record with it, ``forget``): while Django changes a session's key its record names a key with no session
    until ``follow`` moves it, later in that request, and dropping it then would end a live session. Not by
    age alone: a session saved again is kept ``SESSION_COOKIE_AGE`` from then, and outlived its record, which
    the realm could then no longer end."""
    now = timezone.now()
    expired = Session.objects.filter(expire_date__lte=now).values("session_key")
    gone = ~Q(session_key__in=Session.objects.values("session_key"))
    settled = Q(created_at__lt=now - timedelta(seconds=settings.SESSION_COOKIE_AGE))
    SsoSession.objects.filter(Q(session_key__in=expired) | (gone & settled)).delete()


def follow(session: SessionBase) -> None:
    """Move the ``SsoSession`` of a session whose key Django has changed to its new key. Reads nothing
    unless the session was read in this request (so its data is loaded) and holds a recorded key other
    than its own. A record gone meanwhile (a back-channel logout that named it while the key changed, and
    found no session under the old key; or, for a session signed in longer ago than ``SESSION_COOKIE_AGE``,
    dropped by a sign-in elsewhere while the key changed: ``_drop_ended``) can no longer be ended by the
    realm: the session ends here instead."""
    if not session.accessed:
        return
    recorded, key = session.get(RECORDED_KEY), session.session_key
    if not recorded or key is None or recorded == key:
        return
    if SsoSession.objects.filter(session_key=recorded).update(session_key=key):
        session[RECORDED_KEY] = key
    else:
        session.flush()


def forget(session_key: str | None) -> None:
    """A session signed out here is no longer the realm's to end."""
    if session_key:
        SsoSession.objects.filter(session_key=session_key).delete()


def end_session_url(config: OidcConfig, *, id_token: str, post_logout_redirect_uri: str) -> str | None:
    """Where to send the browser to end its session at the realm too; None if the realm offers no
    ``end_session_endpoint`` (or cannot be reached: then only this platform's session ends)."""
    try:
        endpoint = client.discovery(config).get("end_session_endpoint")
    except client.Refused:
        return None
    if not endpoint:
        return None
    query = {"client_id": config.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
    if id_token:
        query = {"id_token_hint": id_token, **query}
    return f"{endpoint}?{urlencode(query)}"


def _refusal(detail: str) -> client.Refused:
    return client.Refused(f"logout_token_invalid: {detail}"[:120], "The logout token was not accepted.")


def verify_logout_token(config: OidcConfig, token: str) -> dict[str, Any]:
    """The logout token's claims, once every check of Back-Channel Logout 1.0 (section 2.6) holds and its
    ``jti`` was not seen before; ``client.Refused`` otherwise."""
    issuer = client.discovery(config)["issuer"]
    check = {"iss": issuer, "aud": config.client_id, "iat": None, "jti": None, "events": None}
    claims = client.verify_jwt(config, token, check, _refusal)
    events = claims.get("events")
    if not isinstance(events, dict) or BACKCHANNEL_EVENT not in events:
        raise _refusal("not a back-channel logout event")
    if "nonce" in claims:
        raise _refusal("carries a nonce")
    if not claims.get("sid") and not claims.get("sub"):
        raise _refusal("names neither a session nor a subject")
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != config.client_id:
        raise _refusal("issued to another party")
    now = time.time()
    issued = claims.get("iat")
    if not isinstance(issued, int | float) or issued < now - MAX_AGE_SECONDS - LEEWAY_SECONDS:
        raise _refusal("issued too long ago")
    expires = claims.get("exp")
    until = expires if isinstance(expires, int | float) else issued + MAX_AGE_SECONDS
    # Seen once for as long as the token could be accepted: a replay is refused.
    digest = hashlib.sha256(f"{issuer} {claims['jti']}".encode()).hexdigest()[:32]
    if not cache.add(f"sso:logout-jti:{digest}", 1, max(1, int(until - now) + LEEWAY_SECONDS)):
        raise _refusal("replayed")
    return claims


@transaction.atomic
def end_sessions(*, actor: Actor, issuer: str, claims: dict[str, Any]) -> int:
    """Delete every session a verified logout token names (by ``sid``, else by ``sub``), each audited as
    ``user.logout`` by the realm; how many were still open."""
    sessions = SsoSession.objects.select_for_update(of=("self",)).select_related("user").filter(issuer=issuer)
    if claims.get("sid"):
        sessions = sessions.filter(sid=str(claims["sid"]))
    if claims.get("sub"):
        sessions = sessions.filter(subject=str(claims["sub"]))
    store = import_module(settings.SESSION_ENGINE).SessionStore
    realm = dataclasses.replace(actor, system=REALM_ACTOR)
    ended, records = 0, list(sessions)
    for record in records:
        if store().exists(record.session_key):
            store().delete(record.session_key)
            audit.record(
                realm, "user.logout", record.user, after={"method": METHOD}, object_repr=record.user.username
            )
            ended += 1
    SsoSession.objects.filter(pk__in=[record.pk for record in records]).delete()
    return ended

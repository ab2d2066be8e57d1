"""Secrets shown once and stored only as a keyed hash (the healthchecks way).

A token reads ``<prefix>_<key_id>_<secret>``: the key id finds the row, then the keyed hash of the whole
token is compared in constant time. Used for personal access tokens here and gateway API keys later.

The hash key rotates without breaking anyone: new hashes use ``TOKEN_HASH_KEY``, and a hash made under one
of ``TOKEN_HASH_KEY_PREVIOUS`` still verifies until that key is dropped from the settings (README, "Rotating
secrets"). ``upgraded_hash`` gives the current key's hash of a token that verified only under an old key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass, field

from django.conf import settings

_KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
KEY_ID_LENGTH = 12


@dataclass(frozen=True)
class IssuedSecret:
    key_id: str
    plaintext: str = field(repr=False)  # shown once to its owner, never in a log or a traceback
    hash: str = field(repr=False)


def keyed_hash(plaintext: str, key: bytes | None = None) -> str:
    return hmac.new(key or settings.TOKEN_HASH_KEY, plaintext.encode(), hashlib.sha256).hexdigest()


def issue(prefix: str) -> IssuedSecret:
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    plaintext = f"{prefix}_{key_id}_{secrets.token_urlsafe(32)}"
    return IssuedSecret(key_id=key_id, plaintext=plaintext, hash=keyed_hash(plaintext))


def parse(prefix: str, presented: str) -> str | None:
    """Return the key id of a well-formed token, or None; never raises on garbage."""
    if len(presented) > 200 or not presented.startswith(prefix + "_"):
        return None
    parts = presented.split("_", 2)
    if len(parts) != 3 or len(parts[1]) != KEY_ID_LENGTH or not parts[1].isalnum() or len(parts[2]) < 16:
        return None
    return parts[1]


def _matching_key(presented: str, stored_hash: str) -> bytes | None:
    for key in (settings.TOKEN_HASH_KEY, *settings.TOKEN_HASH_KEY_PREVIOUS):
        if hmac.compare_digest(keyed_hash(presented, key), stored_hash):
            return key
    return None


def matches(presented: str, stored_hash: str) -> bool:
    """Under the current hash key or, during a rotation's grace period, a previous one."""
    return _matching_key(presented, stored_hash) is not None


def upgraded_hash(presented: str, stored_hash: str) -> str | None:
    """The current key's hash of a token whose stored hash was made under a previous key (store it to drop
    that key sooner); None when it already is current or does not match at all."""
    key = _matching_key(presented, stored_hash)
    return keyed_hash(presented) if key is not None and key != settings.TOKEN_HASH_KEY else None

"""Secrets shown once and stored only as a keyed hash (the healthchecks way).

A token reads ``<prefix>_<key_id>_<secret>``: the key id finds the row, then the keyed hash of the whole
token is compared in constant time. Used for personal access tokens here and gateway API keys later.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from django.conf import settings

_KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
KEY_ID_LENGTH = 12


@dataclass(frozen=True)
class IssuedSecret:
    key_id: str
    plaintext: str
    hash: str


def keyed_hash(plaintext: str) -> str:
    return hmac.new(settings.TOKEN_HASH_KEY, plaintext.encode(), hashlib.sha256).hexdigest()


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


def matches(presented: str, stored_hash: str) -> bool:
    return hmac.compare_digest(keyed_hash(presented), stored_hash)

"""Ed25519 keys that sign audit export manifests.

The server holds the private key; verifiers hold only public keys, so whoever can check an export cannot
forge one (the HMAC scheme this replaces handed every verifier the power to sign). A key is named by its
key id, the first 16 hex digits of the sha256 of its raw 32-byte public key; a manifest names the key id
that signed it, and keys that signed earlier exports stay published after a rotation so those still verify.

This module reads neither Django settings nor the database: the offline verifier imports it as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from portfolio import atomicwrites

ALGORITHM = "Ed25519"
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


class UnreadableKey(ValueError):
    """A key that cannot be read; the message never quotes the key itself."""


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def _base64_32(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UnreadableKey(f"{what}: expected a PEM or the base64 of the raw 32-byte Ed25519 key")
    return raw


def load_private_key(text: str) -> Ed25519PrivateKey:
    """A PEM (PKCS#8, unencrypted: what ``openssl genpkey -algorithm ed25519`` writes) or the base64 of
    the raw 32-byte private key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # cryptography's message is generic; never echo the key material.
            raise UnreadableKey("not a readable, unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise UnreadableKey(
                f"the PEM holds a {type(key).__name__.removesuffix('PrivateKey')} key, not Ed25519"
            )
        return key
    return Ed25519PrivateKey.from_private_bytes(_base64_32(text, "not an Ed25519 private key"))


def load_public_key(text: str) -> Ed25519PublicKey:
    """A PEM public key, an OpenSSH ``ssh-ed25519 AAAA...`` line, or the base64 of the raw 32 bytes."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        elif text.startswith("ssh-ed25519 "):
            key = serialization.load_ssh_public_key(text.encode())
        else:
            return Ed25519PublicKey.from_public_bytes(_base64_32(text, "not an Ed25519 public key"))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if isinstance(exc, UnreadableKey):
            raise
        raise UnreadableKey(f"not a readable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UnreadableKey(f"the key is a {type(key).__name__.removesuffix('PublicKey')} key, not Ed25519")
    return key


def load_public_keys(text: str) -> list[Ed25519PublicKey]:
    """Every key in a text: PEM blocks, or one key per line (or comma) otherwise; ``#`` starts a comment."""
    if "-----BEGIN" in text:
        return [load_public_key(match.group(0)) for match in _PEM_BLOCK.finditer(text)]
    entries = [line.split("#", 1)[0].strip() for line in re.split(r"[\n,]", text)]
    return [load_public_key(entry) for entry in entries if entry]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def sign(payload: bytes, private_key: Ed25519PrivateKey) -> str:
    return base64.b64encode(private_key.sign(payload)).decode()


def signature_holds(payload: bytes, signature: str, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), payload)
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class PublishedKey:
    """A public key verifiers may use: the current signer's, or one that signed earlier exports."""

    public_key: Ed25519PublicKey
    current: bool

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @property
    def status(self) -> str:
        return "current" if self.current else "retired"

    @property
    def pem(self) -> str:
        return public_pem(self.public_key)

    @property
    def pem_base64(self) -> str:
        """The PEM as base64, for a download link that needs no request of its own (a data: URL)."""
        return base64.b64encode(self.pem.encode()).decode()

    @property
    def raw_base64(self) -> str:
        return base64.b64encode(_raw_public(self.public_key)).decode()

    @property
    def fingerprint(self) -> str:
        """The full sha256 of the raw public key, for comparing by eye or over the phone."""
        return hashlib.sha256(_raw_public(self.public_key)).hexdigest()


def published(current: Ed25519PrivateKey | None, previous: list[Ed25519PublicKey]) -> list[PublishedKey]:
    keys = [PublishedKey(current.public_key(), current=True)] if current is not None else []
    seen = {key.key_id for key in keys}
    for public_key in previous:
        if key_id(public_key) not in seen:
            seen.add(key_id(public_key))
            keys.append(PublishedKey(public_key, current=False))
    return keys


# --- Settings ------------------------------------------------------------------------------------------
def development_key(path: Path) -> Ed25519PrivateKey:
    """A per-installation key kept in the data folder, readable by its owner only (like the secret key)."""
    if path.exists() and (text := path.read_text().strip()):
        return load_private_key(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Readable by its owner only; a process starting alongside (web, worker, beat) uses the first one's key.
    written = atomicwrites.create_once(path, pem)
    return key if written == pem else load_private_key(written.decode())


def signing_key_setting(
    text: str | None, *, signer: bool, production: bool, data_dir: Path
) -> Ed25519PrivateKey | None:
    """``PORTFOLIO_AUDIT_SIGNING_KEY`` parsed strictly at start-up; ``None`` in a process that never signs."""
    from django.core.exceptions import ImproperlyConfigured

    if not signer:
        if text is not None:
            # The point of a non-signing process is that it cannot forge exports if it is compromised.
            raise ImproperlyConfigured(
                "PORTFOLIO_AUDIT_SIGNER=false but PORTFOLIO_AUDIT_SIGNING_KEY is set: "
                "give the private key only to processes that sign exports."
            )
        return None
    if text is None:
        if production:
            raise ImproperlyConfigured(
                "PORTFOLIO_AUDIT_SIGNING_KEY must be set (or PORTFOLIO_AUDIT_SIGNING_KEY_FILE) when "
                "PORTFOLIO_ENV=production: the Ed25519 private key that signs audit exports "
                "(openssl genpkey -algorithm ed25519). Processes that never sign exports (worker, beat, "
                "node agents) set PORTFOLIO_AUDIT_SIGNER=false instead."
            )
        return development_key(data_dir / "audit_signing_key.pem")
    try:
        return load_private_key(text)
    except UnreadableKey as exc:
        raise ImproperlyConfigured(
            f"PORTFOLIO_AUDIT_SIGNING_KEY is not valid: {exc}. Audit exports are signed with Ed25519 since "
            "the HMAC scheme was retired; generate a key with `openssl genpkey -algorithm ed25519`."
        ) from None


def public_keys_setting(name: str, text: str | None) -> list[Ed25519PublicKey]:
    from django.core.exceptions import ImproperlyConfigured

    try:
        return load_public_keys(text or "")
    except UnreadableKey as exc:
        raise ImproperlyConfigured(f"{name} is not valid: {exc}.") from None

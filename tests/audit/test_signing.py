"""The audit signing key: Ed25519, strict at start-up, required in production, generated in development."""

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ImproperlyConfigured

from portfolio.audit import signing
from portfolio.audit.exports import build_export
from portfolio.audit.filters import AuditFilter
from portfolio.errors import Conflict
from tests.conftest import actor_for

ROOT = Path(__file__).resolve().parents[2]


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _raw_base64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(
        key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    ).decode()


def _setting(text, *, signer=True, production=False, data_dir=Path("/nonexistent")):
    return signing.signing_key_setting(text, signer=signer, production=production, data_dir=data_dir)


def test_a_pem_or_a_base64_raw_key_is_read_to_the_same_key():
    key = Ed25519PrivateKey.generate()
    expected = signing.key_id(key.public_key())
    assert signing.key_id(_setting(_pem(key)).public_key()) == expected
    assert signing.key_id(_setting(_raw_base64(key)).public_key()) == expected


@pytest.mark.parametrize(
    "text",
    [
        "x9!kkkkkkkkkkkkkkkkkkkkQz#m7m7m7m7m7m7m7m7m7m7m7m7",  # an HMAC secret of the retired scheme
        base64.b64encode(b"\0" * 31).decode(),
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----",
    ],
)
def test_anything_but_an_ed25519_private_key_stops_start_up_without_echoing_it(text):
    with pytest.raises(ImproperlyConfigured, match="PORTFOLIO_AUDIT_SIGNING_KEY is not valid") as caught:
        _setting(text)
    assert text not in str(caught.value) and "openssl genpkey -algorithm ed25519" in str(caught.value)


def test_an_rsa_key_is_named_as_the_wrong_kind():
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(ImproperlyConfigured, match="RSA key, not Ed25519"):
        _setting(rsa_pem)


def test_production_requires_the_key():
    with pytest.raises(ImproperlyConfigured, match="PORTFOLIO_AUDIT_SIGNING_KEY must be set"):
        _setting(None, production=True)


def test_a_process_that_never_signs_holds_no_key_and_refuses_one():
    assert _setting(None, signer=False, production=True) is None
    with pytest.raises(ImproperlyConfigured, match="give the private key only to processes that sign"):
        _setting(_pem(Ed25519PrivateKey.generate()), signer=False, production=True)


@pytest.mark.django_db
def test_a_process_without_the_key_refuses_to_export(settings, org):
    settings.AUDIT_SIGNING_KEY = None
    with pytest.raises(Conflict, match="holds no audit signing key"):
        build_export(actor=actor_for(org["auditor"]), selection=AuditFilter(), fmt="jsonl")


def test_development_generates_a_private_key_readable_by_its_owner_only_and_keeps_it(tmp_path):
    first = _setting(None, data_dir=tmp_path)
    path = tmp_path / "audit_signing_key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.key_id(_setting(None, data_dir=tmp_path).public_key()) == signing.key_id(
        first.public_key()
    )


def _key_id_of_development_key(path: str) -> str:
    return signing.key_id(signing.development_key(Path(path)).public_key())


def test_processes_starting_together_all_get_the_one_development_key(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    path = str(tmp_path / "audit_signing_key.pem")
    with ProcessPoolExecutor(max_workers=6) as pool:
        key_ids = set(pool.map(_key_id_of_development_key, [path] * 24))
    assert key_ids == {signing.key_id(signing.development_key(Path(path)).public_key())}
    assert [p.name for p in tmp_path.iterdir()] == ["audit_signing_key.pem"]


def test_previous_public_keys_are_read_in_every_published_form():
    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(3)]
    pem = "".join(signing.public_pem(key) for key in keys)
    assert [signing.key_id(k) for k in signing.load_public_keys(pem)] == [signing.key_id(k) for k in keys]
    ssh = keys[0].public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    raw = base64.b64encode(
        keys[1].public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    lines = f"# retired 2026-06\n{ssh} auditor@example\n{raw}, \n"
    assert [signing.key_id(k) for k in signing.load_public_keys(lines)] == [
        signing.key_id(k) for k in keys[:2]
    ]
    with pytest.raises(ImproperlyConfigured, match="PORTFOLIO_AUDIT_PREVIOUS_PUBLIC_KEYS is not valid"):
        signing.public_keys_setting("PORTFOLIO_AUDIT_PREVIOUS_PUBLIC_KEYS", "not-a-key")


def test_a_signature_holds_only_for_its_payload_and_key():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = signing.sign(b"payload", key)
    assert signing.signature_holds(b"payload", signature, key.public_key())
    assert not signing.signature_holds(b"payloae", signature, key.public_key())
    assert not signing.signature_holds(b"payload", signature, other.public_key())
    assert not signing.signature_holds(b"payload", "not base64!", key.public_key())


# --- The settings module, in a process of its own ------------------------------------------------------
def _settings_process(tmp_path, **extra) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_", "REDIS_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        PORTFOLIO_DATA_DIR=str(tmp_path / "data"),
        # Never connected to: settings only parse them.
        DATABASE_URL="postgresql://portfolio@127.0.0.1:1/portfolio",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    env.update(extra)
    code = (
        "from django.conf import settings; from portfolio.audit import signing; "
        "key = settings.AUDIT_SIGNING_KEY; print('key', key and signing.key_id(key.public_key()))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def test_settings_read_the_key_from_its_file(tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "audit.pem").write_text(_pem(key))
    result = _settings_process(tmp_path, PORTFOLIO_AUDIT_SIGNING_KEY_FILE=str(tmp_path / "audit.pem"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"key {signing.key_id(key.public_key())}"


def test_production_settings_stop_without_the_key_naming_it(tmp_path):
    secret = "x9!" + "k" * 20 + "Qz#" + "m7" * 20
    result = _settings_process(
        tmp_path,
        PORTFOLIO_ENV="production",
        DJANGO_SECRET_KEY=secret,
        PORTFOLIO_TOKEN_HASH_KEY=secret[::-1],
        PORTFOLIO_ENGINE_KEY_SECRET=secret + "e",
        DJANGO_ALLOWED_HOSTS="portfolio.example.internal",
    )
    assert result.returncode != 0
    assert "PORTFOLIO_AUDIT_SIGNING_KEY must be set" in result.stderr
    assert not (tmp_path / "data" / "audit_signing_key.pem").exists()

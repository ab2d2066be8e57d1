"""A realm behind a private CA, as README "Production" says to run it: web and the workers reach Keycloak's
public address through python-keycloak, whose requests verify against certifi's roots unless
REQUESTS_CA_BUNDLE names another bundle. Checked against a TLS server here with a CA of the test's own."""

import datetime
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portfolio.accounts.sso.client import Refused, discovery
from portfolio.accounts.sso.config import OidcConfig
from tests.compose_file import ROOT

BUNDLE_IN_CONTAINER = "/etc/ssl/portfolio/ca-bundle.pem"


def _certificate(subject: str, key, issuer: x509.Name | None, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def realm_behind_a_private_ca(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A realm's discovery document served over TLS with a certificate of a private CA; the CA's bundle."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Private test CA", ca_key, None, ca_key, ca=True)
    server = _certificate("127.0.0.1", server_key, ca.subject, ca_key, ca=False)
    bundle, chain, key = tmp_path / "ca-bundle.pem", tmp_path / "server.pem", tmp_path / "server.key"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    class Realm(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            realm = f"https://127.0.0.1:{port}/realms/private-ca"
            body = json.dumps(
                {"issuer": realm, "authorization_endpoint": f"{realm}/protocol/openid-connect/auth"}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}/", bundle
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_realm_is_reached_with_requests_ca_bundle_and_refused_without(
    realm_behind_a_private_ca, monkeypatch
):
    server_url, bundle = realm_behind_a_private_ca
    config = OidcConfig(server_url=server_url, realm="private-ca", client_id="portfolio", organisation="SSO")
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Refused):  # certifi's public roots do not know the CA
        discovery(config)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert discovery(config)["issuer"] == f"{server_url}realms/private-ca"


@pytest.mark.parametrize("service", ["web", "worker"])
def test_the_compose_file_shows_where_the_bundle_goes_for_web_and_the_directory_sync(service):
    """Commented out (no bundle unless the operator has a private CA): the variable and the mount of README's."""
    text = (ROOT / "docker-compose.yml").read_text()
    block = text.split(f"\n  {service}:", 1)[1].split("\n\n", 1)[0]  # the service, to its blank line
    assert f"# REQUESTS_CA_BUNDLE: {BUNDLE_IN_CONTAINER}" in block
    assert f"# - ./deploy/ca-bundle.pem:{BUNDLE_IN_CONTAINER}:ro" in block
    production = (ROOT / "README.md").read_text().split("\n## Production", 1)[1]
    assert f"REQUESTS_CA_BUNDLE: {BUNDLE_IN_CONTAINER}" in production.replace("\n   ", " ")

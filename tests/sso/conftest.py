"""The realm the sign-on tests talk to: npm ``oidc-provider`` serving Keycloak's paths (provider/server.mjs),
started once per test run as a real Node process on a free loopback port (``make oidc-provider`` installs
it). A failed test shows the provider's log."""

from __future__ import annotations

import contextlib
import json
import selectors
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import stop_group

PROVIDER = Path(__file__).resolve().parent / "provider"
REALM = "portfolio"
CLIENT_ID = "portfolio"
CLIENT_SECRET = "test-client-secret-0123456789-abcdefghijkl"
REDIRECT_URI = "http://testserver/login/sso/callback/"
# The realm's second client: a Keycloak service account for scripts (client credentials).
SERVICE_CLIENT_ID = "ci-runner"
SERVICE_CLIENT_SECRET = "test-ci-runner-secret-0123456789-abcdefgh"
START_SECONDS = 60  # a cold Node start on a busy two-core machine
USERS = {user["username"]: user for user in json.loads((PROVIDER / "users.json").read_text())}

_logs: list[Path] = []


@dataclass(frozen=True)
class Realm:
    """The running stand-in: its issuer, and its log."""

    issuer: str
    port: int
    log: Path

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@contextlib.contextmanager
def running_realm(
    log_dir: Path,
    redirect_uris: list[str],
    backchannel_logout_uri: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[Realm]:
    """One provider process, accepting these redirect URIs (and sending back-channel logout tokens to
    ``backchannel_logout_uri`` when given; ``extra`` arguments), stopped on leaving."""
    node = shutil.which("node")
    if node is None or not (PROVIDER / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            "The sign-on tests need Node 20.19+ and `make oidc-provider` (npm ci in tests/sso/provider)."
        )
    log = log_dir / "provider.log"
    _logs.append(log)
    command = [node, "server.mjs", "--port", "0", "--realm", REALM, "--client-id", CLIENT_ID]
    command += ["--client-secret", CLIENT_SECRET]
    command += ["--service-client-id", SERVICE_CLIENT_ID, "--service-client-secret", SERVICE_CLIENT_SECRET]
    for uri in redirect_uris:
        command += ["--redirect-uri", uri]
    if backchannel_logout_uri:
        command += ["--backchannel-logout-uri", backchannel_logout_uri]
    command += list(extra)
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=PROVIDER, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
    try:
        # The first stdout line says where it listens, once it does.
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=START_SECONDS):
                pytest.fail(f"oidc-provider did not start in {START_SECONDS} s:\n{log.read_text()}")
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"oidc-provider exited ({process.wait()}):\n{log.read_text()}")
        started = json.loads(line)
        yield Realm(issuer=started["issuer"], port=started["port"], log=log)
    finally:
        stop_group(process, grace=10)


@pytest.fixture(scope="session")
def realm(tmp_path_factory) -> Iterator[Realm]:
    with running_realm(tmp_path_factory.mktemp("oidc-provider"), [REDIRECT_URI]) as started:
        yield started


def switch_on(settings, realm: Realm) -> None:
    """Single sign-on switched on against a test realm, as PORTFOLIO_OIDC_* would."""
    settings.OIDC = {
        "server_url": realm.server_url,
        "realm": REALM,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "organisation": "Acme",
        "api_clients": (CLIENT_ID, SERVICE_CLIENT_ID),  # as docker-compose.yml names ci-runner
    }


@pytest.fixture
def sso(settings, realm):
    switch_on(settings, realm)
    return realm


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _logs and {"realm", "browser_realm"} & set(getattr(item, "fixturenames", ())):
        report.sections.append(("oidc-provider log", _logs[-1].read_text()[-20_000:]))

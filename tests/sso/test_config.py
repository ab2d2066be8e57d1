"""Single sign-on's settings: all of PORTFOLIO_OIDC_* or none, checked at start-up, the secret also from a file."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from portfolio.envparse import Env

FULL = {
    "PORTFOLIO_OIDC_SERVER_URL": "https://keycloak.example.com",
    "PORTFOLIO_OIDC_REALM": "acme",
    "PORTFOLIO_OIDC_CLIENT_ID": "portfolio",
    "PORTFOLIO_OIDC_CLIENT_SECRET": "s3cret",
}


def test_sign_on_is_off_when_nothing_is_set():
    assert Env({}).oidc(production=True) is None


def test_a_full_configuration_names_the_realm_and_the_organisation():
    assert Env({**FULL, "PORTFOLIO_OIDC_ORGANISATION": "Acme Corp"}).oidc(production=True) == {
        "server_url": "https://keycloak.example.com/",
        "realm": "acme",
        "client_id": "portfolio",
        "client_secret": "s3cret",
        "organisation": "Acme Corp",
        "api_audience": "portfolio",
        "api_clients": ("portfolio",),
    }
    assert Env(FULL).oidc(production=False)["organisation"] == "acme"


def test_the_api_audience_is_the_client_id_unless_set():
    from portfolio.accounts.sso.config import OidcConfig

    assert OidcConfig(**Env(FULL).oidc(production=True)).audience == "portfolio"
    environ = {**FULL, "PORTFOLIO_OIDC_API_AUDIENCE": "portfolio-api"}
    assert OidcConfig(**Env(environ).oidc(production=True)).audience == "portfolio-api"


def test_the_clients_whose_tokens_the_api_takes_are_this_one_unless_named():
    from portfolio.accounts.sso.config import OidcConfig

    assert OidcConfig(**Env(FULL).oidc(production=True)).token_clients == {"portfolio"}
    environ = {**FULL, "PORTFOLIO_OIDC_API_CLIENTS": " portfolio, ci-runner,ci-runner "}
    assert OidcConfig(**Env(environ).oidc(production=True)).token_clients == {"portfolio", "ci-runner"}
    for bad in (",", ",".join(f"c{i}" for i in range(33)), "x" * 256):
        with pytest.raises(ImproperlyConfigured, match="PORTFOLIO_OIDC_API_CLIENTS"):
            Env({**FULL, "PORTFOLIO_OIDC_API_CLIENTS": bad}).oidc(production=True)


def test_a_partial_configuration_stops_start_up_naming_what_is_missing():
    partial = {k: v for k, v in FULL.items() if k != "PORTFOLIO_OIDC_CLIENT_SECRET"}
    with pytest.raises(ImproperlyConfigured, match="needs PORTFOLIO_OIDC_CLIENT_SECRET"):
        Env(partial).oidc(production=False)


@pytest.mark.parametrize("url", ["keycloak.example.com", "ftp://keycloak", "https://kc/?realm=x"])
def test_a_server_url_that_is_not_one_is_refused(url):
    with pytest.raises(ImproperlyConfigured, match="PORTFOLIO_OIDC_SERVER_URL"):
        Env({**FULL, "PORTFOLIO_OIDC_SERVER_URL": url}).oidc(production=False)


def test_production_needs_https_to_the_realm():
    plain = {**FULL, "PORTFOLIO_OIDC_SERVER_URL": "http://keycloak:8080"}
    assert Env(plain).oidc(production=False)["server_url"] == "http://keycloak:8080/"
    with pytest.raises(ImproperlyConfigured, match="https in production"):
        Env(plain).oidc(production=True)


def test_the_client_secret_is_read_from_its_file(tmp_path):
    (tmp_path / "secret").write_text("from-a-file\n")
    environ = {k: v for k, v in FULL.items() if k != "PORTFOLIO_OIDC_CLIENT_SECRET"}
    environ["PORTFOLIO_OIDC_CLIENT_SECRET_FILE"] = str(tmp_path / "secret")
    assert Env(environ).oidc(production=True)["client_secret"] == "from-a-file"


def test_the_configuration_never_shows_its_secret():
    from portfolio.accounts.sso.config import OidcConfig

    config = OidcConfig(**Env(FULL).oidc(production=True))
    assert "s3cret" not in repr(config) and config.realm_url == "https://keycloak.example.com/realms/acme"


def test_the_directory_sync_needs_its_client_both_halves_and_single_sign_on(tmp_path):
    oidc = Env(FULL).oidc(production=False)
    assert Env({}).oidc_sync(oidc) is None
    secret = tmp_path / "sync-secret"
    secret.write_text("sync-s3cret\n")
    full = {
        "PORTFOLIO_OIDC_SYNC_CLIENT_ID": "portfolio-sync",
        "PORTFOLIO_OIDC_SYNC_CLIENT_SECRET_FILE": str(secret),
    }
    assert Env(full).oidc_sync(oidc) == {
        "client_id": "portfolio-sync",
        "client_secret": "sync-s3cret",
        "interval": 300,
    }
    with pytest.raises(ImproperlyConfigured, match="needs both"):
        Env({"PORTFOLIO_OIDC_SYNC_CLIENT_ID": "portfolio-sync"}).oidc_sync(oidc)
    with pytest.raises(ImproperlyConfigured, match="single sign-on is not"):
        Env(full).oidc_sync(None)
    with pytest.raises(ImproperlyConfigured, match="PORTFOLIO_OIDC_SYNC_SECONDS"):
        Env({**full, "PORTFOLIO_OIDC_SYNC_SECONDS": "5"}).oidc_sync(oidc)

"""Single sign-on set up against a realm that is not asked (its discovery stood in for): for tests of what the
platform does with answers and directory reads, whatever the realm."""

from __future__ import annotations

import pytest

from portfolio.accounts.sso import client as sso_client
from portfolio.accounts.sso import config as sso_config

ISSUER = "https://sso.example.com/realms/portfolio"


@pytest.fixture
def oidc(settings, monkeypatch):
    settings.OIDC = {
        "server_url": "https://sso.example.com/",
        "realm": "portfolio",
        "client_id": "portfolio",
        "client_secret": "s3cret",
        "organisation": "Acme",
    }
    monkeypatch.setattr(sso_client, "discovery", lambda config: {"issuer": ISSUER})
    return sso_config.current()

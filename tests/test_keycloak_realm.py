"""The realm docker compose imports into Keycloak on its first start (deploy/keycloak/portfolio-realm.json)
cannot be imported here (no Keycloak): check that it parses and holds what the platform relies on, as the
code and the compose file name it (paths, client, mappers, the sync service account's read-only rights)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from django.urls import reverse

ROOT = Path(__file__).resolve().parent.parent
REALM_FILE = ROOT / "deploy" / "keycloak" / "portfolio-realm.json"


@pytest.fixture(scope="module")
def realm() -> dict:
    return json.loads(REALM_FILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def client_of(realm: dict, client_id: str) -> dict:
    return next(client for client in realm["clients"] if client["clientId"] == client_id)


def mapper(client: dict, kind: str) -> dict:
    return next(m for m in client["protocolMappers"] if m["protocolMapper"] == kind)


def test_compose_imports_the_realm_the_web_service_signs_in_with(realm, compose):
    keycloak = compose["services"]["keycloak"]
    assert "./deploy/keycloak:/opt/keycloak/data/import:ro" in keycloak["volumes"]
    assert "--import-realm" in " ".join(keycloak["command"])
    web = compose["services"]["web"]["environment"]
    assert realm["realm"] == web["PORTFOLIO_OIDC_REALM"]
    assert web["PORTFOLIO_OIDC_SERVER_URL"] == keycloak["environment"]["KC_HOSTNAME"]
    client = client_of(realm, web["PORTFOLIO_OIDC_CLIENT_ID"])
    assert client["secret"] == "${PORTFOLIO_OIDC_CLIENT_SECRET}"
    assert web["PORTFOLIO_OIDC_CLIENT_SECRET_FILE"] == "/run/secrets/oidc_client_secret"
    assert (
        keycloak["environment"]["PORTFOLIO_URL"]
        == "https://${PORTFOLIO_HOSTNAME:-portfolio.example.internal}"
    )


def test_every_placeholder_of_the_realm_file_is_given_to_keycloak(compose):
    keycloak = compose["services"]["keycloak"]
    given = set(keycloak["environment"]) | set(re.findall(r"\b([A-Z_]+)=", " ".join(keycloak["command"])))
    placeholders = set(re.findall(r"\$\{([A-Z_]+)(?::[^}]*)?\}", REALM_FILE.read_text()))
    assert placeholders and placeholders <= given, placeholders - given
    for secret in re.findall(r"/run/secrets/(\w+)", " ".join(keycloak["command"])):
        assert secret in keycloak["secrets"] and secret in compose["secrets"]


def test_the_sign_in_client_is_confidential_with_pkce_and_our_paths(realm):
    client = client_of(realm, "portfolio")
    assert not client["publicClient"] and client["standardFlowEnabled"]
    assert not client["implicitFlowEnabled"] and not client["directAccessGrantsEnabled"]
    assert client["redirectUris"] == ["${PORTFOLIO_URL}" + reverse("sso-callback")]
    attributes = client["attributes"]
    assert attributes["pkce.code.challenge.method"] == "S256"
    assert attributes["backchannel.logout.url"] == "${PORTFOLIO_URL}/login/sso/backchannel-logout/"
    assert attributes["backchannel.logout.session.required"] == "true"
    assert set(attributes["post.logout.redirect.uris"].split("##")) == {
        "${PORTFOLIO_URL}/",
        "${PORTFOLIO_URL}" + reverse("login"),
    }
    assert client["frontchannelLogout"] is False


def test_tokens_carry_groups_roles_and_the_api_audience(realm):
    client = client_of(realm, "portfolio")
    groups = mapper(client, "oidc-group-membership-mapper")["config"]
    assert groups["claim.name"] == "groups" and groups["full.path"] == "true"
    assert groups["id.token.claim"] == groups["access.token.claim"] == "true"
    roles = mapper(client, "oidc-usermodel-realm-role-mapper")["config"]
    assert roles["claim.name"] == "realm_access.roles" and roles["id.token.claim"] == "true"
    for client_id in ("portfolio", "ci-runner"):
        audience = mapper(client_of(realm, client_id), "oidc-audience-mapper")["config"]
        assert audience["included.client.audience"] == "portfolio"
        assert audience["access.token.claim"] == "true"


def test_example_groups_and_roles_for_the_mapping_rules(realm):
    def paths(groups, parent=""):
        for group in groups:
            path = f"{parent}/{group['name']}"
            yield path
            yield from paths(group.get("subGroups", []), path)

    assert {"/customer-ops/support-ai", "/finance/forecasting"} <= set(paths(realm["groups"]))
    assert {"portfolio-admin", "portfolio-auditor"} <= {role["name"] for role in realm["roles"]["realm"]}


def test_the_sync_service_account_reads_the_realm_and_nothing_more(realm):
    sync = client_of(realm, "portfolio-sync")
    assert sync["serviceAccountsEnabled"] and not sync["standardFlowEnabled"]
    assert not sync["publicClient"] and sync["secret"].startswith("${")
    account = next(user for user in realm["users"] if user.get("serviceAccountClientId") == "portfolio-sync")
    assert account["clientRoles"] == {"realm-management": ["view-users", "view-clients"]}
    assert not account.get("realmRoles")


def test_the_ci_runner_has_client_credentials_only(realm):
    runner = client_of(realm, "ci-runner")
    assert runner["serviceAccountsEnabled"] and not runner["publicClient"]
    assert not runner["standardFlowEnabled"] and not runner["directAccessGrantsEnabled"]
    assert "secret" not in runner  # Keycloak generates it on import: an admin reads it there
    account = next(user for user in realm["users"] if user.get("serviceAccountClientId") == "ci-runner")
    assert account["username"] == "service-account-ci-runner" and not account.get("clientRoles")

"""docker-compose.yml's Keycloak: production mode on a PostgreSQL database of its own, created by the database
init from its secret. The rest of the file is checked in tests/test_compose.py."""

import re
from urllib.parse import urlsplit

from tests.compose_file import ROOT, env_of


# --- Keycloak: production mode on a PostgreSQL database of its own -----------------------------------------
def secrets_read_by(command: str) -> set[str]:
    """The secret files a shell command reads (``"$$(< /run/secrets/NAME)"``, compose's escaped ``$``)."""
    return set(re.findall(r"\$\$\(< /run/secrets/(\w+)\)", command))


def test_keycloak_runs_in_production_mode_on_its_own_postgresql_database(compose):
    """`start-dev` keeps the realm in an H2 file with development defaults; `start` refuses to run without a
    supported database, a host name and, behind a TLS proxy, HTTP enabled explicitly."""
    keycloak = compose["services"]["keycloak"]
    command = " ".join(keycloak["command"])
    assert re.search(r"kc\.sh start --import-realm$", command) and "start-dev" not in command
    env = env_of(compose, "keycloak")
    assert env["KC_DB"] == "postgres"
    url = urlsplit(env["KC_DB_URL"].removeprefix("jdbc:"))
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql", "postgres", 5432, "/keycloak")
    assert env["KC_DB_USERNAME"] == "keycloak" and "KC_DB_PASSWORD" not in env  # from its secret file
    assert 'KC_DB_PASSWORD="$$(< /run/secrets/keycloak_db_password)"' in command
    assert keycloak["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # Behind the TLS proxy, as before: plain HTTP, X-Forwarded-* believed, the public URL as its host name.
    assert env["KC_HTTP_ENABLED"] == "true" and env["KC_PROXY_HEADERS"] == "xforwarded"
    assert env["KC_HOSTNAME"] == "https://sso.example.internal"
    # Nothing kept in the container but the realm file it imports.
    assert keycloak["volumes"] == ["./deploy/keycloak:/opt/keycloak/data/import:ro"]
    assert "keycloak-data" not in compose["volumes"]


def test_keycloak_mounts_exactly_the_secrets_its_command_reads(compose):
    keycloak = compose["services"]["keycloak"]
    assert secrets_read_by(" ".join(keycloak["command"])) == set(keycloak["secrets"])
    assert "keycloak_db_password" in keycloak["secrets"]
    for name in keycloak["secrets"]:
        assert compose["secrets"][name]["file"] == f"./secrets/{name}"


def test_the_database_init_creates_keycloaks_role_and_database_from_its_secret(compose):
    env = env_of(compose, "keycloak")
    role, database = env["KC_DB_USERNAME"], urlsplit(env["KC_DB_URL"].removeprefix("jdbc:")).path[1:]
    init = (ROOT / "deploy" / "postgres" / "init-roles.sh").read_text()
    postgres = compose["services"]["postgres"]
    assert "keycloak_db_password" in postgres["secrets"]
    assert '"${KEYCLOAK_DB_PASSWORD_FILE:-/run/secrets/keycloak_db_password}"' in init
    # The password reaches psql as a variable (the heredoc is quoted: the shell expands nothing in it).
    assert "<<'SQL'" in init and "\\getenv keycloak_password KEYCLOAK_PASSWORD" in init
    assert f"format('ALTER ROLE {role} PASSWORD %L', :'keycloak_password')" in init
    # Created once, whatever reruns: each CREATE only where it does not exist yet.
    assert f"'CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'" in init
    assert f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')" in init
    assert f"'CREATE DATABASE {database} OWNER {role}'" in init
    assert f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')" in init
    # Its database is its own: nobody else connects, and the platform's database does not let it in.
    assert f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;" in init
    assert not re.search(rf"GRANT .* TO {role}\b", init)
    assert "REVOKE ALL ON DATABASE portfolio FROM PUBLIC;" in init

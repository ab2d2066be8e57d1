#!/bin/sh
# PostgreSQL's first start (docker-entrypoint-initdb.d), as the superuser: the platform's two roles, and
# Keycloak's database.
#   portfolio      owns the database and its schema; only `portfolio migrate` connects as it.
#   portfolio_app  every other process; `portfolio migrate` grants it ordinary DML and, on the audit trail,
#                  only SELECT and INSERT (portfolio/dbroles.py): it cannot rewrite or unguard the history.
#   keycloak       owns the database keycloak and its schema, where Keycloak creates its tables; it cannot
#                  connect to portfolio, nor the platform's roles to keycloak.
# Idempotent: an existing installation runs it once by hand (README, "Production"):
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/init-roles.sh
# Passwords come from the secret files and reach psql as variables, never on a command line.
set -eu
OWNER_PASSWORD="$(cat "${DB_OWNER_PASSWORD_FILE:-/run/secrets/db_owner_password}")"
APP_PASSWORD="$(cat "${DB_APP_PASSWORD_FILE:-/run/secrets/db_app_password}")"
KEYCLOAK_PASSWORD="$(cat "${KEYCLOAK_DB_PASSWORD_FILE:-/run/secrets/keycloak_db_password}")"
export OWNER_PASSWORD APP_PASSWORD KEYCLOAK_PASSWORD

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
\getenv owner_password OWNER_PASSWORD
\getenv app_password APP_PASSWORD
\getenv keycloak_password KEYCLOAK_PASSWORD
SELECT 'CREATE ROLE portfolio LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portfolio') \gexec
SELECT 'CREATE ROLE portfolio_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portfolio_app') \gexec
SELECT format('ALTER ROLE portfolio PASSWORD %L', :'owner_password') \gexec
SELECT format('ALTER ROLE portfolio_app PASSWORD %L', :'app_password') \gexec
SELECT 'CREATE DATABASE portfolio OWNER portfolio'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'portfolio') \gexec
ALTER DATABASE portfolio OWNER TO portfolio;
REVOKE ALL ON DATABASE portfolio FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE portfolio TO portfolio_app;
SELECT 'CREATE ROLE keycloak LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keycloak') \gexec
SELECT format('ALTER ROLE keycloak PASSWORD %L', :'keycloak_password') \gexec
SELECT 'CREATE DATABASE keycloak OWNER keycloak'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'keycloak') \gexec
ALTER DATABASE keycloak OWNER TO keycloak;
REVOKE ALL ON DATABASE keycloak FROM PUBLIC;
\connect portfolio
-- The schema belongs to the owner; nobody else creates objects in it.
ALTER SCHEMA public OWNER TO portfolio;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO portfolio_app;
\connect keycloak
ALTER SCHEMA public OWNER TO keycloak;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL

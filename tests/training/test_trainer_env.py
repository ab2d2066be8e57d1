"""The trainer child process reads its settings exactly as the node agent that starts it did: `*_FILE`
secrets stay files, a password full of URL characters stays one password, the URL's options are kept.

A PostgreSQL of its own checks passwords here (scram-sha-256): the test servers trust every local connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.private_postgres import private_postgres
from training import tasks

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "p@ss/w#rd?:%&=+ ü"  # every character a URL gives a meaning to
ROLE, DATABASE, APPLICATION = "trainer", "jobs", "portfolio-trainer-probe"

# What the trainer's Django settings connect to, and which secrets it holds (as digests).
PROBE = """
import hashlib, json, os, django
django.setup()
from django.conf import settings
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT current_user, current_database(), current_setting('application_name')")
    user, database, application = cursor.fetchone()
digest = lambda value: hashlib.sha256(value if isinstance(value, bytes) else value.encode()).hexdigest()
print(json.dumps({
    "user": user, "database": database, "application_name": application,
    "secret_key": digest(settings.SECRET_KEY), "token_hash_key": digest(settings.TOKEN_HASH_KEY),
    "environment": os.environ.copy(),
}))
"""
# The node agent: a production process that connects, then starts its trainer with `_trainer_env()`.
PARENT = """
import hashlib, json, subprocess, sys, django
django.setup()
from django.conf import settings
from django.db import connection
from training.tasks import _trainer_env
connection.ensure_connection()
child = subprocess.run([sys.executable, "-c", sys.argv[1]], env=_trainer_env(), capture_output=True, text=True)
sys.stderr.write(child.stderr)
print(json.dumps({
    "parent_secret_key": hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest(),
    "parent_token_hash_key": hashlib.sha256(settings.TOKEN_HASH_KEY).hexdigest(),
    "child": json.loads(child.stdout) if child.returncode == 0 else None,
}))
"""


@pytest.fixture(scope="module")
def guarded_postgres():
    """(socket folder, port) of a PostgreSQL that asks role ``trainer`` for its password."""
    with private_postgres() as (server, _socket_dir):
        yield from _guard(server)


def _guard(server):
    admin = server.get_uri("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE))
        )
    (Path(server.pgdata) / "pg_hba.conf").write_text(
        "local all postgres trust\nlocal all all scram-sha-256\n"
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    info = conninfo_to_dict(admin)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=info["host"], user=ROLE, dbname=DATABASE, password="wrong").close()
    yield info["host"], info.get("port") or "5432"


def production_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A node agent's environment as compose gives it: production, every secret in a file of its own."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_"))}
    for name, value in {
        "DJANGO_SECRET_KEY": "django-secret-" + "d" * 40,
        "PORTFOLIO_TOKEN_HASH_KEY": "token-hash-" + "t" * 40,
        "PORTFOLIO_ENGINE_KEY_SECRET": "engine-keys-" + "e" * 40,
    }.items():
        (secrets / name.lower()).write_text(value + "\n")
        env[f"{name}_FILE"] = str(secrets / name.lower())
    env.update(
        PORTFOLIO_ENV="production",
        PORTFOLIO_AUDIT_SIGNER="false",  # a node agent signs no audit export
        PORTFOLIO_DATA_DIR=str(tmp_path / "data"),
        REDIS_URL=settings.REDIS_URL,
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        **variables,
    )
    return env


def start_trainer_from(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PARENT, PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["child"] is not None, f"the trainer did not start:\n{result.stderr[-3000:]}"
    return report


def test_a_trainer_started_by_a_production_agent_connects_with_its_password_file_and_url_options(
    guarded_postgres, tmp_path
):
    host, port = guarded_postgres
    password_file = tmp_path / "db_password"
    password_file.write_text(PASSWORD + "\n")
    env = production_env(
        tmp_path,
        DATABASE_URL=f"postgresql://{ROLE}@/{DATABASE}?host={quote(host)}&port={port}&application_name={APPLICATION}",
        DATABASE_PASSWORD_FILE=str(password_file),
    )
    report = start_trainer_from(env)
    child = report["child"]
    assert (child["user"], child["database"], child["application_name"]) == (ROLE, DATABASE, APPLICATION)
    # The same secrets as the agent, read from the same files: none of them written into its environment.
    assert (child["secret_key"], child["token_hash_key"]) == (
        report["parent_secret_key"],
        report["parent_token_hash_key"],
    )
    assert child["environment"]["DJANGO_SECRET_KEY_FILE"] == env["DJANGO_SECRET_KEY_FILE"]
    assert child["environment"]["DATABASE_PASSWORD_FILE"] == str(password_file)
    assert "DJANGO_SECRET_KEY" not in child["environment"] and "DATABASE_PASSWORD" not in child["environment"]
    assert not any(PASSWORD in value for value in child["environment"].values())


def test_a_trainer_connects_with_a_password_full_of_url_characters_given_in_the_url(
    guarded_postgres, tmp_path
):
    host, port = guarded_postgres
    url = (
        f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@/{DATABASE}"
        f"?host={quote(host)}&port={port}&application_name={APPLICATION}"
    )
    child = start_trainer_from(production_env(tmp_path, DATABASE_URL=url))["child"]
    assert (child["user"], child["database"], child["application_name"]) == (ROLE, DATABASE, APPLICATION)


def test_a_trainer_started_here_connects_to_the_test_database_its_agent_uses(db, tmp_path):
    """Where the agent does not run on what its environment says (the embedded server, a test database), the
    trainer is told outright, every part of the URL quoted."""
    env = {**tasks._trainer_env(), "DJANGO_SETTINGS_MODULE": "portfolio.settings"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    child = json.loads(result.stdout)
    assert child["database"] == connection.settings_dict["NAME"]
    assert child["secret_key"] == hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest()
    assert child["environment"]["PORTFOLIO_DATA_DIR"] == str(settings.DATA_DIR)

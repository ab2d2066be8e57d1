"""Shared fixtures: an organisation with one user per role, on real PostgreSQL."""

from __future__ import annotations

import time
import warnings

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.db import connection

from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import OrgRole, TeamRole
from portfolio.accounts.models import Department, Membership, OrgRoleGrant, Team
from tests import flush_retry, row_locks
from tests.compose_file import ROOT

PASSWORD = "correct-horse-battery-staple"

flush_retry.install()
row_locks.install()


# A process a test started (gateway, `portfolio web`, Celery worker, node agent) may hold its database
# session for a moment after it was stopped: PostgreSQL ends a backend once it notices its client is gone.
OTHER_SESSIONS_GRACE = 15.0


def other_sessions() -> list[tuple]:
    """Sessions on the test database other than this one: (pid, application, state, started, last query)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # inside a transaction the view is a snapshot
        cursor.execute(
            "SELECT pid, application_name, state, backend_start, left(query, 200) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid"
        )
        return cursor.fetchall()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, dropped only once it is the only session left on it.

    Otherwise PostgreSQL refuses the drop ("being accessed by other users") and pytest-django turns that
    into a warning at the end of the run, leaving the database behind. Sessions of stopped processes get
    a grace period to end; one still open after it is a leak: it is named in a warning, then ended.
    """
    yield
    from django.db import connection

    with django_db_blocker.unblock():
        deadline = time.monotonic() + OTHER_SESSIONS_GRACE
        while (left := other_sessions()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:
            warnings.warn(
                pytest.PytestWarning(
                    "sessions still open on the test database at the end of the run (a process or "
                    f"thread a test started did not close its connection), ended now: {left}"
                ),
                stacklevel=1,
            )
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [[r[0] for r in left]]
                )


# Tables PostgreSQL keeps append-only (the audit trail, closed statements), whose TRUNCATE triggers a
# transactional test's flush must get past.
NO_TRUNCATE_TRIGGERS = [
    ("audit_auditevent", "audit_event_no_truncate"),
    ("billing_statement", "billing_statement_no_truncate"),
    ("billing_statementline", "billing_statement_line_no_truncate"),
]


@pytest.fixture(autouse=True)
def _audit_table_append_only(request):
    """Keep the append-only trigger on for every test; let transactional tests' flush empty the table.

    Django empties tables between transactional tests with TRUNCATE, which the trigger refuses by design;
    as the test database's superuser we switch the TRUNCATE trigger off for that flush only.
    """
    marker = request.node.get_closest_marker("django_db")
    if marker is None and "live_server" not in request.fixturenames:
        yield
        return
    transactional = "live_server" in request.fixturenames or bool(
        marker and (marker.kwargs.get("transaction") or (marker.args and marker.args[0]))
    )
    request.getfixturevalue("transactional_db" if transactional else "db")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_delete")
        for table, trigger in NO_TRUNCATE_TRIGGERS:
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
    yield
    if transactional:
        with connection.cursor() as cursor:
            for table, trigger in NO_TRUNCATE_TRIGGERS:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")


@pytest.fixture(autouse=True)
def _empty_cache():
    """Login-failure counters and other cached state live in Redis, outside the test transaction."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Argon2 is deliberately slow; tests create many users and only need hashing to be correct.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def restores_latest_schema():
    """For a test that migrates an app backwards: every app's latest migrations are applied again after it,
    or the tests after it would run against a schema missing the migrations it took out (and the apps
    depending on them)."""
    from django.db.migrations.executor import MigrationExecutor

    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.fixture
def sent(monkeypatch) -> list[tuple]:
    """Celery tasks sent, as (name, args): recorded instead of reaching a broker."""
    from celery.app.task import Task

    calls: list[tuple] = []

    def record(task, args=None, kwargs=None, **options):
        calls.append((task.name, tuple(args or ())))

    monkeypatch.setattr(Task, "apply_async", record)
    return calls


@pytest.fixture
def make_user(db):
    def make(username: str, *, superuser: bool = False, org_role: str | None = None):
        User = get_user_model()
        user = User.objects.create_user(username=username, password=PASSWORD, is_superuser=superuser)
        if org_role:
            OrgRoleGrant.objects.create(user=user, role=org_role)
        return user

    return make


@pytest.fixture
def department(db):
    return Department.objects.create(name="Customer Operations", cost_center="CC-100")


@pytest.fixture
def other_department(db):
    return Department.objects.create(name="Legal", cost_center="CC-200")


@pytest.fixture
def team(department):
    return Team.objects.create(department=department, name="Support AI", slug="support-ai")


@pytest.fixture
def other_team(other_department):
    return Team.objects.create(department=other_department, name="Contracts", slug="contracts")


@pytest.fixture
def org(make_user, team, other_team):
    """One user per role: owner/engineer/developer/viewer of ``team``, an outsider (owner of
    ``other_team``), an auditor and a platform admin."""
    users = {
        "admin": make_user("admin", superuser=True),
        "auditor": make_user("auditor", org_role=OrgRole.AUDITOR),
        "outsider": make_user("outsider"),
    }
    for role in TeamRole.values:
        users[role] = make_user(role)
        Membership.objects.create(user=users[role], team=team, role=role)
    Membership.objects.create(user=users["outsider"], team=other_team, role=TeamRole.OWNER)
    return users


@pytest.fixture
def signed_in(client):
    """``signed_in(user)``: the test client, signed in as ``user``."""

    def sign_in(user):
        client.force_login(user)
        return client

    return sign_in


@pytest.fixture
def member_of_both(make_user, team, other_team) -> Actor:
    """An engineer of ``team`` and of ``other_team``: sees the other team's private models and pools, which
    ``team`` may not use."""
    user = make_user("both")
    Membership.objects.create(user=user, team=team, role=TeamRole.ENGINEER)
    Membership.objects.create(user=user, team=other_team, role=TeamRole.ENGINEER)
    return actor_for(user)


def actor_for(user) -> Actor:
    return Actor(user=user, ip="127.0.0.1", user_agent="pytest", request_id="test")


@pytest.fixture
def system_actor() -> Actor:
    return Actor.for_system("tests")


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml, parsed once per module of tests/test_compose*.py."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())

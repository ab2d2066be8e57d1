"""PostgreSQL roles: the owner migrates, the application only appends to the audit trail.

Migrations run as the role that owns the schema (`portfolio migrate`, compose's ``migrate`` service). Every
other process connects as the application role (``DATABASE_APP_ROLE``), which may read and write ordinary
tables but only SELECT and INSERT on the audit trail: it can neither UPDATE, DELETE nor TRUNCATE events, nor
switch off the triggers that guard them (ALTER TABLE is the owner's), so a compromised application cannot
rewrite history and rehash the chain.

``grant_app_role`` is idempotent and runs after every `portfolio migrate`: default privileges let the role use
tables that later migrations create, and the audit trail's restriction is applied again each time.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

# Tables the application may only read and append to.
APPEND_ONLY_TABLES = ("audit_auditevent",)
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")


def grant_app_role(role: str | None = None) -> list[str]:
    """Grant ``role`` (default ``DATABASE_APP_ROLE``) what the application needs and no more; returns the
    statements run (none when no application role is configured)."""
    role = role if role is not None else settings.DATABASE_APP_ROLE
    if not role:
        return []
    if not _ROLE_NAME.match(role):
        raise ImproperlyConfigured(f"DATABASE_APP_ROLE={role!r}: a lower-case PostgreSQL role name.")
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
        found = cursor.fetchone()
        cursor.execute("SELECT current_user, current_database(), current_schema()")
        owner, database, schema = cursor.fetchone()
    if found is None:
        raise ImproperlyConfigured(
            f"DATABASE_APP_ROLE: role {role!r} does not exist; create it (deploy/postgres/init-roles.sh)."
        )
    if found[0] or role == owner:
        raise ImproperlyConfigured(
            f"DATABASE_APP_ROLE: {role!r} is the owner or a superuser; it could alter the audit trail."
        )
    quote = connection.ops.quote_name
    app, db, ns = quote(role), quote(database), quote(schema)
    statements = [
        # TEMPORARY too: the usage flush copies each batch through a temporary table (serving/gateway/usage.py),
        # a right every role has by default that the init script's REVOKE ALL ... FROM PUBLIC took away.
        f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {app}",
        f"GRANT USAGE ON SCHEMA {ns} TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {ns} TO {app}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {ns} TO {app}",
        # Tables and sequences this owner creates later (the next migrations) are usable at once.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {ns} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {ns} GRANT USAGE, SELECT ON SEQUENCES TO {app}",
    ]
    for table in APPEND_ONLY_TABLES:
        statements += [
            f"REVOKE ALL ON TABLE {quote(table)} FROM {app}",
            f"GRANT SELECT, INSERT ON TABLE {quote(table)} TO {app}",
        ]
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    return statements

"""Indexes the audit list's actor and action filters can use (the old ones served neither).

Built CONCURRENTLY, outside a transaction: every audited change appends to this table, and a plain CREATE
INDEX would block those writes (and so every service function) while it reads a long trail. The new indexes
are built before the old ones are dropped, so the filters are never left without one. Index DDL is the
owner's, like every migration; the append-only triggers refuse only UPDATE, DELETE and TRUNCATE of rows.
"""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("audit", "0002_append_only_trigger")]

    operations = [
        AddIndexConcurrently(
            model_name="auditevent",
            index=models.Index(
                fields=["action", "sequence"],
                opclasses=["varchar_pattern_ops", "int8_ops"],
                name="audit_action_prefix",
            ),
        ),
        AddIndexConcurrently(
            model_name="auditevent",
            index=models.Index(fields=["actor_label", "sequence"], name="audit_actor_label"),
        ),
        # (action, sequence) under a locale (non-C) collation cannot serve LIKE 'team.%'; the index above
        # serves exact actions too.
        RemoveIndexConcurrently(model_name="auditevent", name="audit_action"),
        # (actor_user_id, sequence): no filter or query reads the trail by user id.
        RemoveIndexConcurrently(model_name="auditevent", name="audit_actor"),
    ]

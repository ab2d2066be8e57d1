from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="AuditEvent",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("sequence", models.BigIntegerField(unique=True)),
                ("occurred_at", models.DateTimeField()),
                ("actor_kind", models.CharField(max_length=16)),
                ("actor_label", models.CharField(max_length=150)),
                ("actor_user_id", models.BigIntegerField(null=True)),
                ("actor_token_id", models.BigIntegerField(null=True)),
                ("action", models.CharField(max_length=64)),
                ("object_type", models.CharField(max_length=64)),
                ("object_id", models.CharField(max_length=64)),
                ("object_repr", models.CharField(max_length=200)),
                ("department_id", models.BigIntegerField(null=True)),
                ("team_id", models.BigIntegerField(null=True)),
                ("request_id", models.CharField(blank=True, max_length=64)),
                ("ip", models.CharField(blank=True, max_length=45)),
                ("user_agent", models.CharField(blank=True, max_length=300)),
                ("before", models.JSONField(null=True)),
                ("after", models.JSONField(null=True)),
                ("prev_hash", models.CharField(max_length=64)),
                ("hash", models.CharField(max_length=64, unique=True)),
            ],
            options={
                "ordering": ["-sequence"],
                "indexes": [
                    models.Index(fields=["occurred_at"], name="audit_occurred_at"),
                    models.Index(fields=["object_type", "object_id"], name="audit_object"),
                    models.Index(fields=["action", "sequence"], name="audit_action"),
                    models.Index(fields=["actor_user_id", "sequence"], name="audit_actor"),
                    models.Index(fields=["team_id", "sequence"], name="audit_team"),
                    models.Index(fields=["department_id", "sequence"], name="audit_department"),
                ],
            },
        ),
    ]

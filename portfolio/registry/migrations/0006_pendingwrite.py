import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0005_source_merge"),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingWrite",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("token", models.CharField(max_length=32, unique=True)),
                ("owner", models.CharField(help_text="The run that wrote it, for people", max_length=200)),
                ("written", models.JSONField(default=dict, help_text="{blobs: [sha256], manifest}")),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "ordering": ["updated_at"],
                "indexes": [models.Index(fields=["updated_at"], name="pending_write_updated_idx")],
            },
        ),
    ]

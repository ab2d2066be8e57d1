# Rollouts (a canary watched, then promoted or rolled back) and sticky A/B assignment of endpoints.

import django.core.validators
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("serving", "0004_pool_rates_to_price_book"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="endpoint",
            name="sticky_by",
            field=models.CharField(
                choices=[
                    ("none", "Random by weight"),
                    ("api_key", "Sticky per API key"),
                    ("header", "Sticky per request header"),
                ],
                default="none",
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="endpoint",
            name="sticky_header",
            field=models.CharField(
                blank=True,
                help_text="The request header whose value picks the variant (lower case)",
                max_length=64,
            ),
        ),
        migrations.CreateModel(
            name="Rollout",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("deployment", models.CharField(max_length=63)),
                ("adapter", models.CharField(blank=True, max_length=63)),
                (
                    "baseline",
                    models.JSONField(default=list, help_text="The routes before the canary (route_list)"),
                ),
                (
                    "canary_percent",
                    models.PositiveSmallIntegerField(
                        default=5,
                        validators=[
                            django.core.validators.MinValueValidator(1),
                            django.core.validators.MaxValueValidator(50),
                        ],
                    ),
                ),
                (
                    "window_seconds",
                    models.PositiveIntegerField(
                        default=600,
                        validators=[
                            django.core.validators.MinValueValidator(60),
                            django.core.validators.MaxValueValidator(86400),
                        ],
                    ),
                ),
                ("min_requests", models.PositiveIntegerField(default=20)),
                (
                    "max_error_rate_increase",
                    models.FloatField(default=0.02, help_text="Canary's error rate minus baseline's"),
                ),
                (
                    "max_latency_ratio",
                    models.FloatField(default=1.5, help_text="Canary's p95 latency over baseline's"),
                ),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("canary", "Canary watched"),
                            ("promoted", "Promoted"),
                            ("rolled_back", "Rolled back"),
                            ("aborted", "Aborted"),
                        ],
                        default="canary",
                        max_length=12,
                    ),
                ),
                ("reason", models.TextField(blank=True)),
                (
                    "figures",
                    models.JSONField(blank=True, default=dict, help_text="The last check's baseline and canary"),
                ),
                (
                    "steps",
                    models.JSONField(blank=True, default=list, help_text="[{at, kind, reason}]: the timeline"),
                ),
                ("started_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("ends_at", models.DateTimeField()),
                ("checked_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "endpoint",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="rollouts",
                        to="serving.endpoint",
                    ),
                ),
                (
                    "started_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-started_at", "-id"],
                "indexes": [models.Index(fields=["state"], name="serving_rollout_state")],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("state", "canary")),
                        fields=("endpoint",),
                        name="one_active_rollout_per_endpoint",
                    )
                ],
            },
        ),
    ]

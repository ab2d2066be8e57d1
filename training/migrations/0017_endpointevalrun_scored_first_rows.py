from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0016_dataset_version_purged_artifact"),
    ]

    operations = [
        # The runs there are scored their sets' first rows: true for them, false for every run from now on.
        migrations.AddField(
            model_name="endpointevalrun",
            name="scored_first_rows",
            field=models.BooleanField(default=True),
        ),
        migrations.AlterField(
            model_name="endpointevalrun",
            name="scored_first_rows",
            field=models.BooleanField(default=False),
        ),
    ]

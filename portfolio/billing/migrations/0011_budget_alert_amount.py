# An alert is one per (budget, month, threshold, amount): raising a budget's amount mid-month alerts its
# thresholds again, of the new amount. Alerts already sent are taken to be of their budget's amount now
# (the amount they were measured against unless it changed since, which was not recorded).

import django.utils.timezone
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def amounts_of_their_budgets(apps, schema_editor):
    Budget = apps.get_model("billing", "Budget")
    BudgetAlert = apps.get_model("billing", "BudgetAlert")
    BudgetAlert.objects.update(amount=Subquery(Budget.objects.filter(pk=OuterRef("budget_id")).values("amount")))


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0010_compute_gpu_share'),
    ]

    operations = [
        # Budgets made before this migration count as made now: none is alerted on a month before it.
        migrations.AddField(
            model_name='budget',
            name='created_at',
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='amount',
            field=models.DecimalField(decimal_places=2, max_digits=14, null=True),
        ),
        migrations.RunPython(amounts_of_their_budgets, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='budgetalert',
            name='amount',
            field=models.DecimalField(decimal_places=2, help_text="The budget's amount the threshold is a percentage of", max_digits=14),
        ),
        migrations.RemoveConstraint(
            model_name='budgetalert',
            name='one_alert_per_threshold_month',
        ),
        migrations.AddConstraint(
            model_name='budgetalert',
            constraint=models.UniqueConstraint(fields=('budget', 'month', 'threshold', 'amount'), name='one_alert_per_threshold_amount_month'),
        ),
    ]

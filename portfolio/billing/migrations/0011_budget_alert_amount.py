# An alert is one per (budget, month, threshold, amount): raising a budget's amount mid-month alerts its
# thresholds again, of the new amount. Alerts already sent are taken to be of their budget's amount now
# (the amount they were measured against unless it changed since, which was not recorded).

from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def one_per_threshold_and_month(apps, schema_editor):
    """Back to one alert per (budget, month, threshold): the one of the highest amount is kept."""
    BudgetAlert = apps.get_model("billing", "BudgetAlert")
    kept: set[tuple] = set()
    for alert in BudgetAlert.objects.order_by("budget_id", "month", "threshold", "-amount", "pk"):
        key = (alert.budget_id, alert.month, alert.threshold)
        if key in kept:
            alert.delete()
        kept.add(key)


def amounts_of_their_budgets(apps, schema_editor):
    Budget = apps.get_model("billing", "Budget")
    BudgetAlert = apps.get_model("billing", "BudgetAlert")
    BudgetAlert.objects.update(amount=Subquery(Budget.objects.filter(pk=OuterRef("budget_id")).values("amount")))


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0010_compute_gpu_share'),
    ]

    operations = [
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
        # Run backwards only: before the old constraint is put back.
        migrations.RunPython(migrations.RunPython.noop, one_per_threshold_and_month),
        migrations.AddConstraint(
            model_name='budgetalert',
            constraint=models.UniqueConstraint(fields=('budget', 'month', 'threshold', 'amount'), name='one_alert_per_threshold_amount_month'),
        ),
    ]

"""Budgets get periods with fixed date ranges, multi-dimension scopes and typed thresholds; alerts get the
figures of their moment and per-channel deliveries.

Data: a budget's account becomes its `accounts`, its service_name its `service_names`, and its thresholds
(a list of percentages) the same percentages of ACTUAL spend (no forecast threshold is added to existing
budgets: they keep alerting exactly as before). Existing alerts get their period end, currency, budget
amount and threshold amount from their budget. Backwards: the first account and service are kept, and
alerts the old schema cannot hold (forecasted or absolute thresholds) are deleted.
"""

from decimal import Decimal, InvalidOperation

import costs_app.models
import django.contrib.postgres.fields
import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


def _threshold_forward(value):
    """A percentage as the old form stored it -> the new entry; anything else is kept for the admin to show."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return value
    if not number.is_finite() or number <= 0:
        return value
    return {"type": "percentage", "value": format(number.normalize(), "f"), "basis": "actual"}


def budgets_forward(apps, schema_editor):
    Budget = apps.get_model("costs_app", "Budget")
    for budget in Budget.objects.all().iterator():
        if budget.account_id:
            budget.accounts.add(budget.account_id)
        budget.service_names = [budget.service_name] if budget.service_name else []
        budget.thresholds = [_threshold_forward(t) for t in budget.thresholds or []]
        budget.save(update_fields=["service_names", "thresholds"])
    schema_editor.execute(
        """
        UPDATE costs_app_budgetalert a
        SET currency = b.currency, budget_amount = b.amount, threshold_amount = b.amount * a.threshold / 100,
            period_end = (a.period_start + CASE b.period WHEN 'quarterly' THEN interval '3 months'
                                                         WHEN 'annual' THEN interval '1 year'
                                                         ELSE interval '1 month' END)::date - 1
        FROM costs_app_budget b
        WHERE b.id = a.budget_id
        """
    )


def budgets_backward(apps, schema_editor):
    Budget = apps.get_model("costs_app", "Budget")
    BudgetAlert = apps.get_model("costs_app", "BudgetAlert")
    BudgetAlert.objects.exclude(threshold_type="percentage", basis="actual").delete()
    for budget in Budget.objects.prefetch_related("accounts").iterator(chunk_size=500):
        accounts = sorted(account.id for account in budget.accounts.all())
        budget.account_id = accounts[0] if accounts else None
        budget.service_name = (budget.service_names or [""])[0]
        budget.thresholds = [
            int(Decimal(t["value"])) if Decimal(t["value"]) == int(Decimal(t["value"])) else float(t["value"])
            for t in budget.thresholds or []
            if isinstance(t, dict) and t.get("type") == "percentage" and t.get("basis") == "actual"
        ]
        budget.save(update_fields=["account", "service_name", "thresholds"])
    Budget.objects.filter(period="custom").update(period="monthly")


class Migration(migrations.Migration):

    dependencies = [
        ('costs_app', '0005_optim_recommendation_lifecycle'),
        ('providers_app', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='AlertDelivery',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('status', models.CharField(choices=[('pending', 'Pending (or waiting to retry)'), ('sent', 'Sent'), ('failed', 'Failed (gave up)')], default='pending', max_length=16)),
                ('attempts', models.IntegerField(default=0)),
                ('next_attempt_at', models.DateTimeField(blank=True, null=True)),
                ('last_attempt_at', models.DateTimeField(blank=True, null=True)),
                ('sent_at', models.DateTimeField(blank=True, null=True)),
                ('last_error', models.TextField(blank=True, default='')),
                ('attempt_log', models.JSONField(blank=True, default=list)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                'verbose_name_plural': 'alert deliveries',
            },
        ),
        migrations.RemoveConstraint(
            model_name='budgetalert',
            name='budget_alert_once',
        ),
        migrations.AddField(
            model_name='budget',
            name='accounts',
            field=models.ManyToManyField(blank=True, help_text='Empty: every account.', related_name='budgets', to='providers_app.cloudaccount'),
        ),
        migrations.AddField(
            model_name='budget',
            name='end_date',
            field=models.DateField(blank=True, help_text='Fixed date range budgets: last day (included).', null=True),
        ),
        migrations.AddField(
            model_name='budget',
            name='region_ids',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.TextField(blank=True), blank=True, default=list, help_text='FOCUS RegionId values.', size=None),
        ),
        migrations.AddField(
            model_name='budget',
            name='service_names',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.TextField(blank=True), blank=True, default=list, help_text='FOCUS ServiceName values.', size=None),
        ),
        migrations.AddField(
            model_name='budget',
            name='start_date',
            field=models.DateField(blank=True, help_text='Fixed date range budgets: first day.', null=True),
        ),
        migrations.AddField(
            model_name='budget',
            name='sub_account_ids',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.TextField(blank=True), blank=True, default=list, help_text='FOCUS SubAccountId values; empty: all.', size=None),
        ),
        migrations.AddField(
            model_name='budget',
            name='tag_key',
            field=models.CharField(blank=True, help_text='Filter by this tag (made a cost allocation tag and backfilled).', max_length=256),
        ),
        migrations.AddField(
            model_name='budget',
            name='tag_values',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.TextField(blank=True), blank=True, default=list, help_text='Values of the tag that count.', size=None),
        ),
        migrations.AddField(
            model_name='budget',
            name='updated_at',
            field=models.DateTimeField(auto_now=True),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='basis',
            field=models.CharField(choices=[('actual', 'Actual spend'), ('forecasted', 'Forecasted spend')], default='actual', max_length=16),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='budget_amount',
            field=models.DecimalField(blank=True, decimal_places=2, max_digits=20, null=True),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='currency',
            field=models.CharField(blank=True, max_length=3),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='forecast',
            field=models.DecimalField(blank=True, decimal_places=15, help_text='Forecast for the whole period, then.', max_digits=38, null=True),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='forecast_percentage',
            field=models.DecimalField(blank=True, decimal_places=2, max_digits=20, null=True),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='period_end',
            field=models.DateField(blank=True, help_text='Last day of the period (included).', null=True),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='threshold_amount',
            field=models.DecimalField(blank=True, decimal_places=15, help_text='The threshold in money.', max_digits=38, null=True),
        ),
        migrations.AddField(
            model_name='budgetalert',
            name='threshold_type',
            field=models.CharField(choices=[('percentage', 'Percentage of the amount'), ('absolute', 'Absolute amount')], default='percentage', max_length=16),
        ),
        migrations.AlterField(
            model_name='budget',
            name='currency',
            field=models.CharField(default='USD', help_text='Only spend billed in this currency counts.', max_length=3),
        ),
        migrations.AlterField(
            model_name='budget',
            name='period',
            field=models.CharField(choices=[('monthly', 'Monthly'), ('quarterly', 'Quarterly'), ('annual', 'Annual'), ('custom', 'Fixed date range')], default='monthly', max_length=16),
        ),
        migrations.AlterField(
            model_name='budget',
            name='thresholds',
            field=models.JSONField(default=costs_app.models.default_thresholds, help_text='A JSON list; each entry {"type": "percentage" or "absolute", "value": number, "basis": "actual" or "forecasted"}. A bare number means a percentage of actual spend. Default: 50, 80, 100 % actual and 100 % forecasted.'),
        ),
        migrations.AlterField(
            model_name='budgetalert',
            name='notified_at',
            field=models.DateTimeField(blank=True, help_text='First successful delivery.', null=True),
        ),
        migrations.AlterField(
            model_name='budgetalert',
            name='percentage',
            field=models.DecimalField(decimal_places=2, help_text='Actual spend, % of the amount.', max_digits=20),
        ),
        migrations.AlterField(
            model_name='budgetalert',
            name='resolved_at',
            field=models.DateTimeField(blank=True, help_text='Set when the period is over.', null=True),
        ),
        migrations.AlterField(
            model_name='budgetalert',
            name='spend',
            field=models.DecimalField(decimal_places=15, help_text='Actual spend of the period when the alert was created.', max_digits=38),
        ),
        migrations.AlterField(
            model_name='budgetalert',
            name='threshold',
            field=models.DecimalField(decimal_places=2, help_text='Percent, or an amount (see type).', max_digits=22),
        ),
        migrations.RunPython(budgets_forward, budgets_backward),
        migrations.RemoveField(
            model_name='budget',
            name='account',
        ),
        migrations.RemoveField(
            model_name='budget',
            name='service_name',
        ),
        migrations.RemoveField(
            model_name='budgetalert',
            name='notification_errors',
        ),
        migrations.AddConstraint(
            model_name='budgetalert',
            constraint=models.UniqueConstraint(fields=('budget', 'period_start', 'basis', 'threshold_type', 'threshold'), name='budget_alert_once'),
        ),
        migrations.AddField(
            model_name='alertdelivery',
            name='alert',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='costs_app.budgetalert'),
        ),
        migrations.AddField(
            model_name='alertdelivery',
            name='channel',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='costs_app.notificationchannel'),
        ),
        migrations.AddIndex(
            model_name='alertdelivery',
            index=models.Index(fields=['status', 'next_attempt_at'], name='alert_delivery_due_idx'),
        ),
        migrations.AddConstraint(
            model_name='alertdelivery',
            constraint=models.UniqueConstraint(fields=('alert', 'channel'), name='alert_delivery_once'),
        ),
    ]

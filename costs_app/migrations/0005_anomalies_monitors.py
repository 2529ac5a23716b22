"""Anomaly monitors (account, account × service, account × tag value, each with its own floors and channels),
the two default monitors, and the new columns of Anomaly (one row per anomaly that grows, status audit)."""

from decimal import Decimal

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import costs_app.models


def create_default_monitors(apps, schema_editor):
    AnomalyMonitor = apps.get_model("costs_app", "AnomalyMonitor")
    floors = {
        "min_impact": Decimal(str(settings.ANOMALY_MIN_IMPACT)).quantize(Decimal("0.01")),
        "min_impact_percent": Decimal(str(settings.ANOMALY_MIN_IMPACT_PERCENT)).quantize(Decimal("0.01")),
    }
    AnomalyMonitor.objects.get_or_create(name="Accounts", defaults={"dimension": "account", **floors})
    AnomalyMonitor.objects.get_or_create(name="Services per account", defaults={"dimension": "service", **floors})


class Migration(migrations.Migration):
    dependencies = [
        ("costs_app", "0004_tag_rollups"),
        ("providers_app", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AnomalyMonitor",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=200, unique=True)),
                (
                    "dimension",
                    models.CharField(
                        choices=[("account", "Account"), ("service", "Account × service"), ("tag", "Account × tag value")],
                        default="account",
                        max_length=16,
                    ),
                ),
                (
                    "tag_key",
                    models.CharField(
                        blank=True,
                        default="",
                        help_text="The tag key whose values are the series (tag monitors).",
                        max_length=256,
                    ),
                ),
                (
                    "min_impact",
                    models.DecimalField(
                        decimal_places=2,
                        default=costs_app.models.default_min_impact,
                        help_text="Absolute floor: a day's impact (actual − expected, billing currency) must be at least this.",
                        max_digits=20,
                        validators=[django.core.validators.MinValueValidator(Decimal("0"))],
                    ),
                ),
                (
                    "min_impact_percent",
                    models.DecimalField(
                        decimal_places=2,
                        default=costs_app.models.default_min_impact_percent,
                        help_text="Percentage floor: a day's impact must be at least this % of the expected spend.",
                        max_digits=9,
                        validators=[django.core.validators.MinValueValidator(Decimal("0"))],
                    ),
                ),
                ("is_active", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "account",
                    models.ForeignKey(
                        blank=True,
                        help_text="Watch one account only; empty watches every active account.",
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="anomaly_monitors",
                        to="providers_app.cloudaccount",
                    ),
                ),
                (
                    "channels",
                    models.ManyToManyField(
                        blank=True,
                        help_text="Told about each new anomaly.",
                        related_name="anomaly_monitors",
                        to="costs_app.notificationchannel",
                    ),
                ),
            ],
            options={
                "ordering": ["name"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("dimension", "tag"), models.Q(("tag_key", ""), _negated=True)),
                            models.Q(models.Q(("dimension", "tag"), _negated=True), ("tag_key", "")),
                            _connector="OR",
                        ),
                        name="anomaly_monitor_tag_key_iff_tag",
                    )
                ],
            },
        ),
        migrations.RunPython(create_default_monitors, migrations.RunPython.noop),
        # The per-day key goes first: it names service_name, which is renamed next.
        migrations.RemoveConstraint(model_name="anomaly", name="anomaly_series_day_uniq"),
        migrations.RenameField(model_name="anomaly", old_name="service_name", new_name="dimension_value"),
        migrations.AlterField(
            model_name="anomaly",
            name="dimension_value",
            field=models.TextField(
                blank=True,
                default="",
                help_text="The service or tag value of the series; empty for an account series.",
            ),
        ),
        migrations.AddField(
            model_name="anomaly",
            name="monitor",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="anomalies",
                to="costs_app.anomalymonitor",
            ),
        ),
        migrations.AddField(model_name="anomaly", name="start_day", field=models.DateField(null=True)),
        migrations.AddField(
            model_name="anomaly",
            name="end_day",
            field=models.DateField(null=True, help_text="The latest anomalous day."),
        ),
        migrations.AddField(model_name="anomaly", name="day_count", field=models.PositiveIntegerField(default=1)),
        migrations.AddField(model_name="anomaly", name="days", field=models.JSONField(blank=True, default=list)),
        migrations.AddField(
            model_name="anomaly", name="status_note", field=models.TextField(blank=True, default="")
        ),
        migrations.AddField(
            model_name="anomaly", name="status_changed_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="anomaly",
            name="status_changed_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="anomaly", name="status_history", field=models.JSONField(blank=True, default=list)
        ),
        migrations.AddField(model_name="anomaly", name="notified_at", field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(
            model_name="anomaly", name="notified_channels", field=models.JSONField(blank=True, default=list)
        ),
        migrations.AddField(
            model_name="anomaly", name="notification_errors", field=models.JSONField(blank=True, default=list)
        ),
        migrations.AddField(
            model_name="anomaly",
            name="notification_attempts",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="anomaly",
            name="impact_percent",
            field=models.DecimalField(blank=True, decimal_places=2, max_digits=12, null=True),
        ),
        migrations.AlterField(
            model_name="anomaly",
            name="score",
            field=models.FloatField(help_text="The highest score of its days (distance above expected, in sigmas)."),
        ),
    ]

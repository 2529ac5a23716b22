"""Anomaly rows are per series and start day now: the per-day key and column go, the new key and indexes come."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("costs_app", "0006_anomalies_existing")]

    operations = [
        migrations.AlterModelOptions(
            name="anomaly",
            options={"ordering": ["-end_day", "-impact"], "verbose_name_plural": "anomalies"},
        ),
        migrations.RemoveField(model_name="anomaly", name="day"),
        migrations.AlterField(
            model_name="anomaly",
            name="monitor",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="anomalies", to="costs_app.anomalymonitor"
            ),
        ),
        migrations.AlterField(model_name="anomaly", name="start_day", field=models.DateField()),
        migrations.AlterField(
            model_name="anomaly", name="end_day", field=models.DateField(help_text="The latest anomalous day.")
        ),
        migrations.AddConstraint(
            model_name="anomaly",
            constraint=models.UniqueConstraint(
                fields=("monitor", "account", "dimension_value", "currency", "start_day"),
                name="anomaly_series_start_uniq",
            ),
        ),
        migrations.AddIndex(
            model_name="anomaly",
            index=models.Index(
                fields=["monitor", "account", "dimension_value", "currency", "end_day"], name="anomaly_series_end_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="anomaly",
            index=models.Index(fields=["status", "end_day"], name="anomaly_status_end_idx"),
        ),
    ]

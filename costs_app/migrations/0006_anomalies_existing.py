"""Existing per-day anomalies become one-day anomalies of the default monitors (statuses kept)."""

from django.db import migrations


def convert(apps, schema_editor):
    Anomaly = apps.get_model("costs_app", "Anomaly")
    AnomalyMonitor = apps.get_model("costs_app", "AnomalyMonitor")
    monitors = {m.dimension: m for m in AnomalyMonitor.objects.filter(name__in=["Accounts", "Services per account"])}
    for anomaly in Anomaly.objects.filter(monitor__isnull=True).iterator():
        anomaly.monitor = monitors["service" if anomaly.dimension_value else "account"]
        anomaly.start_day = anomaly.end_day = anomaly.day
        anomaly.day_count = 1
        anomaly.days = [
            {
                "day": anomaly.day.isoformat(),
                "expected": str(anomaly.expected),
                "actual": str(anomaly.actual),
                "impact": str(anomaly.impact),
                "impact_percent": None if anomaly.impact_percent is None else float(anomaly.impact_percent),
                "score": anomaly.score,
            }
        ]
        anomaly.save()


class Migration(migrations.Migration):
    dependencies = [("costs_app", "0005_anomalies_monitors")]

    operations = [migrations.RunPython(convert, migrations.RunPython.noop)]

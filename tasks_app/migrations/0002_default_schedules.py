"""The seed's six schedules (UTC) and the ledger reconciler, as django-celery-beat rows editable in the admin."""

from django.db import migrations

# name, task, crontab (minute, hour, day_of_week) or interval seconds, expires seconds
SCHEDULES = [
    ("Cost data sync (every 6 hours)", "sync_provider_cost_data", ("0", "*/6", "*"), 6 * 3600),
    ("Resource discovery (daily 02:00 UTC)", "discover_provider_resources", ("0", "2", "*"), 24 * 3600),
    ("Budget monitoring (hourly)", "monitor_budget", ("0", "*", "*"), 3600),
    ("Optimization analysis (daily 03:00 UTC)", "analyze_optimization_opportunities", ("0", "3", "*"), 24 * 3600),
    ("Anomaly detection (every 4 hours)", "detect_cost_anomalies", ("0", "*/4", "*"), 4 * 3600),
    ("Data cleanup (Sunday 01:00 UTC)", "cleanup_old_data", ("0", "1", "0"), 7 * 24 * 3600),
    ("Task ledger reconciler (every minute)", "reconcile_task_runs", 60, 60),
]


def create(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    for name, task, when, expires in SCHEDULES:
        fields = {"task": task, "kwargs": "{}", "expire_seconds": expires, "enabled": True}
        if isinstance(when, tuple):
            minute, hour, day_of_week = when
            fields["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=minute, hour=hour, day_of_week=day_of_week, day_of_month="*", month_of_year="*", timezone="UTC"
            )
        else:
            fields["interval"], _ = IntervalSchedule.objects.get_or_create(every=when, period="seconds")
        PeriodicTask.objects.update_or_create(name=name, defaults=fields)


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[s[0] for s in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]

"""The default schedules' names without their schedule ("Budget monitoring", not "Budget monitoring (hourly)"):
a name that embeds the schedule goes stale when the schedule is edited. The admin shows the schedule and the
next run in columns of their own. A schedule renamed by hand (or a new name already taken) is left alone."""

from django.db import migrations

RENAMES = [
    ("Cost data sync (every 6 hours)", "Cost data sync"),
    ("Resource discovery (daily 02:00 UTC)", "Resource discovery"),
    ("Budget monitoring (hourly)", "Budget monitoring"),
    ("Optimization analysis (daily 03:00 UTC)", "Optimization analysis"),
    ("Anomaly detection (every 4 hours)", "Anomaly detection"),
    ("Data cleanup (Sunday 01:00 UTC)", "Data cleanup"),
    ("Task ledger reconciler (every minute)", "Task ledger reconciler"),
]


def rename(apps, schema_editor, pairs):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for old, new in pairs:
        if not PeriodicTask.objects.filter(name=new).exists():
            PeriodicTask.objects.filter(name=old).update(name=new)


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0007_split_error_tracebacks"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.RunPython(
            lambda apps, editor: rename(apps, editor, RENAMES),
            lambda apps, editor: rename(apps, editor, [(new, old) for old, new in RENAMES]),
        )
    ]

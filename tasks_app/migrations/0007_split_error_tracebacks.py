"""Runs (and dead letters) that failed before the traceback had its own field kept it inside `error`, after the
message: move it to TaskRun.error_traceback, so users are shown the message only."""

from django.db import migrations

MARK = "\nTraceback (most recent call last):"


def forwards(apps, schema_editor):
    TaskRun = apps.get_model("tasks_app", "TaskRun")
    DeadLetter = apps.get_model("tasks_app", "DeadLetter")
    for run in TaskRun.objects.filter(error__contains=MARK).only("id", "error").iterator():
        message, _, rest = run.error.partition(MARK)
        TaskRun.objects.filter(id=run.id).update(error=message, error_traceback=MARK.lstrip("\n") + rest)
    for letter in DeadLetter.objects.filter(error__contains=MARK).only("id", "error").iterator():
        DeadLetter.objects.filter(id=letter.id).update(error=letter.error.partition(MARK)[0])


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0006_taskrun_account_and_traceback")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]

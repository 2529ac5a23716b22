"""One retention policy per data class, from the RETENTION_*_DAYS settings (0 = created disabled)."""

from django.conf import settings
from django.db import migrations

# The days a policy created disabled starts with, so enabling it in the admin needs no guess.
FALLBACK_DAYS = 365


def create_policies(apps, schema_editor):
    from tasks_app.models import RETENTION_MIN_DAYS, RetentionDataClass

    RetentionPolicy = apps.get_model("tasks_app", "RetentionPolicy")
    for data_class in RetentionDataClass.values:
        days = int(settings.RETENTION_DAYS.get(data_class, 0))
        RetentionPolicy.objects.get_or_create(
            data_class=data_class,
            defaults={
                "enabled": days > 0,
                "days": days if days > 0 else max(FALLBACK_DAYS, RETENTION_MIN_DAYS[data_class]),
            },
        )


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0004_optim_retention_policy")]

    operations = [migrations.RunPython(create_policies, migrations.RunPython.noop)]

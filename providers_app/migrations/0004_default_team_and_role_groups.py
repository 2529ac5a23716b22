"""Existing accounts go to a team "Default"; the role groups (Viewers, Operators, Account admins, Platform admins)
are created with their model permissions (providers_app.roles; post_migrate keeps them current afterwards)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

DEFAULT_TEAM = "Default"


def forwards(apps, schema_editor):
    Team = apps.get_model("providers_app", "Team")
    CloudAccount = apps.get_model("providers_app", "CloudAccount")
    if CloudAccount.objects.filter(team__isnull=True).exists():
        team, _ = Team.objects.get_or_create(name=DEFAULT_TEAM)
        CloudAccount.objects.filter(team__isnull=True).update(team=team)
    # On a fresh database the permissions are only created after the last migration: create them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from providers_app.roles import role_groups_sync

    role_groups_sync(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("providers_app", "0003_teams_and_memberships"),
        ("costs_app", "0011_channel_team"),
        ("tasks_app", "0006_taskrun_account_and_traceback"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("django_celery_results", "0014_alter_taskresult_status"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]

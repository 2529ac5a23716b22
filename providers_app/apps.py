from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _role_groups_after_migrate(sender, app_config=None, using="default", **kwargs):
    # tasks_app is the last FinOps app in INSTALLED_APPS: by its post_migrate every model's permissions exist.
    if app_config is None or app_config.label != "tasks_app":
        return
    from django.contrib.auth.models import Group, Permission

    from .roles import role_groups_sync

    role_groups_sync(Group.objects.db_manager(using).model, Permission)


class ProvidersAppConfig(AppConfig):
    name = "providers_app"
    verbose_name = "Cloud providers"

    def ready(self):
        post_migrate.connect(_role_groups_after_migrate, dispatch_uid="providers_app_role_groups")

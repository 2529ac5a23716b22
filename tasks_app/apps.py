from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from finops import jwt_auth

        from . import platform, tasks  # noqa: F401  (registers the tasks, connects the publish signal)

        jwt_auth.connect_signals()  # a password change blacklists the user's refresh tokens

        from django.contrib import admin

        # The header's navigation (templates/admin/base_site.html) and the index lead to every page; the app list
        # beside every page would take 300 px from lists that must fit at 1440 px.
        admin.site.enable_nav_sidebar = False

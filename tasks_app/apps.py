from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from finops import jwt_auth

        from . import platform, tasks  # noqa: F401  (registers the tasks, connects the publish signal)

        jwt_auth.connect_signals()  # a password change blacklists the user's refresh tokens

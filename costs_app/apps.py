from django.apps import AppConfig


class CostsAppConfig(AppConfig):
    name = "costs_app"
    verbose_name = "Costs"

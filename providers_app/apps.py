from django.apps import AppConfig


class ProvidersAppConfig(AppConfig):
    name = "providers_app"
    verbose_name = "Cloud providers"

from django.apps import AppConfig
from django.db.models.signals import pre_delete


class CostsAppConfig(AppConfig):
    name = "costs_app"
    verbose_name = "Costs"

    def ready(self):
        from providers_app.models import CloudAccount

        from .services.budgets import budgets_account_deleted

        # Deleting an account removes it from budget scopes (a many-to-many row); a budget left with no
        # account would silently widen to all spend, so it is deactivated instead.
        pre_delete.connect(budgets_account_deleted, sender=CloudAccount, dispatch_uid="budgets_account_deleted")

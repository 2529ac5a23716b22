"""Admin building blocks shared by the apps."""


class ReadOnlyAdminMixin:
    """Rows written by imports and tasks (cost lines, rollups, alerts, the task ledger): never edited by hand."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

"""Admin building blocks shared by the apps."""


class ReadOnlyAdminMixin:
    """Rows written by imports and tasks (cost lines, rollups, alerts, the task ledger): never edited by hand."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class TeamScopedAdminMixin:
    """Every admin page of an account-derived model sees only the user's teams' rows (providers_app.selectors).

    The changelist, the change page (403 for another team's object), the actions (their queryset) and the
    foreign-key / many-to-many selects (no other team's account, channel, budget... among the choices).
    Subclasses set `scope_path`, the lookup from the model to its CloudAccount ("account", "run__account",
    "" for CloudAccount itself, None for organisation-wide models), or override `scope_queryset`.
    Viewing needs the viewer role, changing and deleting `change_role`.
    """

    scope_path: str | None = "account"
    change_role = "account_admin"

    def scope_queryset(self, queryset, user, *, role):
        from providers_app.selectors import visible_to

        return visible_to(queryset, user, account_path=self.scope_path, role=role, permission=None)

    def get_queryset(self, request):
        return self.scope_queryset(super().get_queryset(request), request.user, role="viewer")

    def in_scope(self, request, obj, *, role) -> bool:
        if obj is None:
            return True
        base = self.model._default_manager.filter(pk=obj.pk)
        return self.scope_queryset(base, request.user, role=role).exists()

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) and self.in_scope(request, obj, role="viewer")

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self.in_scope(request, obj, role=self.change_role)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self.in_scope(request, obj, role=self.change_role)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        choices = scoped_choices(db_field.related_model, request.user, role=self.change_role)
        if choices is not None:
            kwargs["queryset"] = choices
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        choices = scoped_choices(db_field.related_model, request.user, role=self.change_role)
        if choices is not None:
            kwargs["queryset"] = choices
        return super().formfield_for_manytomany(db_field, request, **kwargs)


def scoped_choices(model, user, *, role):
    """The rows of `model` a form may offer `user` (None: not a team-scoped model, leave the choices alone)."""
    from costs_app import selectors as costs
    from costs_app.models import AnomalyMonitor, Budget, NotificationChannel
    from providers_app.models import CloudAccount, Resource, Team
    from providers_app.selectors import accounts_for, teams_for, visible_to

    if model is CloudAccount:
        return accounts_for(user, role=role)
    if model is Team:
        return teams_for(user, role=role)
    if model is NotificationChannel:
        return costs.channels_for(user, role=role, permission=None)
    if model is Budget:
        return costs.budgets_for(user, role=role, permission=None)
    if model is AnomalyMonitor:
        return costs.anomaly_monitors_for(user, role=role, permission=None)
    if model is Resource:
        return visible_to(Resource.objects.all(), user, role=role, permission=None)
    return None


class PlatformAdminOnlyMixin:
    """Organisation-wide settings (schedules, retention, cost allocation tags, Celery results): platform admins
    only, on top of the model permissions."""

    def _platform(self, request) -> bool:
        from providers_app.selectors import is_platform_admin

        return is_platform_admin(request.user)

    def has_module_permission(self, request):
        return self._platform(request) and super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        return self._platform(request) and super().has_view_permission(request, obj)

    def has_add_permission(self, request, *args):
        return self._platform(request) and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None):
        return self._platform(request) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._platform(request) and super().has_delete_permission(request, obj)

"""Who may do what in the task API: anyone signed in reads; triggering, cancelling and replaying need a permission.

Object level: the system is single-tenant for now, so every signed-in user sees every run, account
and dead letter. When tenants arrive, scope the selectors by the user's organisation here.
"""

from rest_framework.permissions import BasePermission

TRIGGER_PERMISSION = "tasks_app.trigger_tasks"


class CanTriggerTasks(BasePermission):
    """The `tasks_app.trigger_tasks` permission (superusers have every permission)."""

    message = "You need the 'Can trigger and cancel tasks' permission (tasks_app.trigger_tasks)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(TRIGGER_PERMISSION))

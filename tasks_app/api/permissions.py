"""Who may do what in the task API: reads need view_taskrun / view_deadletter; triggering, cancelling and replaying
need the trigger permission.

Object level (which runs, accounts and dead letters): the selectors scope every queryset by the user's teams
(tasks_app.selectors.runs_for / dead_letters_for, providers_app.selectors); an id outside it is not found.
"""

from rest_framework.permissions import BasePermission

TRIGGER_PERMISSION = "tasks_app.trigger_tasks"


class CanTriggerTasks(BasePermission):
    """The `tasks_app.trigger_tasks` permission (superusers have every permission)."""

    message = "You need the 'Can trigger and cancel tasks' permission (tasks_app.trigger_tasks)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(TRIGGER_PERMISSION))

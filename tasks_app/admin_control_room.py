"""The control room page of the admin (/admin/control-room/) and its buttons.

The page is a skeleton that static/finops/control_room.js fills from GET /api/v1/tasks/control-room every few
seconds (no inline script: the CSP holds). Its buttons post here; each one runs the very admin action of the
changelist (PeriodicTaskAdmin.run_now, TaskRunAdmin.cancel_runs, DeadLetterAdmin.replay) on one row, after the
same checks Django's changelist makes: the action must be among the user's actions (its permission, e.g.
tasks_app.trigger_tasks), the model viewable, and the row inside the admin's queryset (the user's scope).
"""

from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django_celery_beat.models import PeriodicTask

from .models import DeadLetter, TaskRun

# What a button may do: the model whose admin owns the action, and the action's name there.
BUTTONS = {
    "run_now": (PeriodicTask, "run_now"),
    "cancel": (TaskRun, "cancel_runs"),
    "replay": (DeadLetter, "replay"),
}
POLL_SECONDS = 5


def control_room_view(request):
    if not request.user.has_perm("tasks_app.view_taskrun"):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Control room",
        "poll_seconds": POLL_SECONDS,
        "can_trigger": request.user.has_perm("tasks_app.trigger_tasks"),
    }
    return TemplateResponse(request, "admin/control_room.html", context)


def control_room_act(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    button = BUTTONS.get(request.POST.get("do", ""))
    if button is None:
        raise Http404("unknown action")
    model, action_name = button
    model_admin = admin.site._registry[model]
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    actions = model_admin.get_actions(request)
    if action_name not in actions:
        raise PermissionDenied
    func = actions[action_name][0]
    try:
        queryset = model_admin.get_queryset(request).filter(pk=request.POST.get("id", ""))
        found = queryset.exists()
    except (ValueError, ValidationError):
        found = False
    if not found:
        raise Http404("no such row in your scope")
    func(model_admin, request, queryset)
    return redirect("admin-control-room")

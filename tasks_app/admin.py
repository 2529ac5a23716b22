"""Task management in the admin: schedules (run now), the TaskRun trail (cancel, run again), dead letters (replay),
retention policies (edit, dry run, clean up now)."""

import json

from celery import current_app
from django.contrib import admin, messages
from django.db import transaction
from django.urls import reverse
from django.utils.html import format_html
from django_celery_beat import admin as beat_admin
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from django_celery_results.models import GroupResult, TaskResult

from finops.admin_mixins import PlatformAdminOnlyMixin, ReadOnlyAdminMixin, TeamScopedAdminMixin
from providers_app.models import Role
from providers_app.selectors import is_platform_admin

from .models import DeadLetter, RetentionPolicy, RunState, TaskRun, TriggerKind
from .services.runs import UnknownTask, dead_letter_replay, run_cancel, task_enqueue

TRIGGER_PERMISSION = "tasks_app.trigger_tasks"


class TriggerPermissionMixin:
    """`@admin.action(permissions=["trigger"])`: only holders of tasks_app.trigger_tasks (and superusers)."""

    def has_trigger_permission(self, request) -> bool:
        return request.user.has_perm(TRIGGER_PERMISSION)


def format_duration(ms: int | None) -> str:
    if ms is None:
        return "—"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def pretty_json(value) -> str:
    if value in (None, "", [], {}):
        return "—"
    return format_html('<pre class="finops-json">{}</pre>', json.dumps(value, indent=2, default=str))


def run_link(run: TaskRun | None) -> str:
    if run is None:
        return "—"
    url = reverse("admin:tasks_app_taskrun_change", args=[run.pk])
    return format_html('<a href="{}">{}</a>', url, run.celery_task_id)


def state_badge(state: str, result=None) -> str:
    # Colours per state are classes in static/finops/admin.css: the CSP refuses inline style attributes.
    if state == RunState.SUCCESS and isinstance(result, dict) and result.get("ok") is False:
        # The task ran, what it checked did not work (a failed connection test): shown as the failure it is.
        return format_html(
            '<span class="finops-state finops-state-FAILURE" title="{}">CHECK FAILED</span>',
            result.get("summary") or "the check failed",
        )
    css = f"finops-state-{state}" if state in RunState.values else ""
    return format_html('<span class="finops-state {}">{}</span>', css, state)


def account_label(run: TaskRun) -> str:
    """The run's account; a run of no single account (a fan-out parent, housekeeping) says so."""
    return run.account.name if run.account_id else "(all accounts)"


def _report(modeladmin, request, done: list[str], failed: list[str], verb: str) -> None:
    if done:
        modeladmin.message_user(request, f"{verb} {len(done)}: {', '.join(done)}", messages.SUCCESS)
    if failed:
        modeladmin.message_user(request, f"Not {verb.lower()} {len(failed)}: {'; '.join(failed)}", messages.WARNING)


# --- Schedules: django-celery-beat's admin, with "run now" going through the ledger ---
# Organisation-wide: platform admins only. Beat's own enable/disable/toggle actions declare no permission, so
# a view-only user could run them: they are re-declared here needing the change permission.

admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(PlatformAdminOnlyMixin, TriggerPermissionMixin, BeatPeriodicTaskAdmin):
    # Beat's own "run_tasks" publishes behind the ledger's back (no user, no trigger kind); ours replaces it.
    actions = ("run_now", "enable_tasks", "disable_tasks", "toggle_tasks")
    # Beat's form template has an inline script (refused by the CSP): ours loads it from a file.
    change_form_template = "admin/finops/periodictask_change_form.html"
    list_display = ("name", "task", "enabled", "scheduler", "last_run_at", "next_run", "total_run_count", "one_off")
    list_select_related = ("interval", "crontab", "solar", "clocked")

    @admin.display(description="next run")
    def next_run(self, obj):
        from django.utils import timezone
        from django.utils.formats import date_format

        from .control_room import next_run_at

        when = next_run_at(obj, timezone.now())
        return date_format(when, "DATETIME_FORMAT") if when else "—"

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request, queryset):
        return super().enable_tasks(request, queryset)

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request, queryset):
        return super().disable_tasks(request, queryset)

    @admin.action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request, queryset):
        return super().toggle_tasks(request, queryset)

    @admin.action(description="Run selected schedules now", permissions=["trigger"])
    def run_now(self, request, queryset):
        done, failed = [], []
        with transaction.atomic():  # publish only once every run is recorded
            for pt in queryset:
                try:
                    run = task_enqueue(
                        task_name=pt.task,
                        kwargs=json.loads(pt.kwargs or "{}"),
                        triggered_by=TriggerKind.ADMIN,
                        user=request.user,
                        trigger_detail=pt.name,
                    )
                except UnknownTask:
                    # Housekeeping tasks (the reconciler) are plain Celery tasks: send them, untracked.
                    if pt.task not in current_app.tasks:
                        failed.append(f"{pt.name}: task {pt.task!r} is not registered")
                        continue
                    kwargs = json.loads(pt.kwargs or "{}")
                    transaction.on_commit(lambda t=pt.task, k=kwargs: current_app.send_task(t, kwargs=k))
                    done.append(f"{pt.name} (not tracked in the ledger)")
                except ValueError as exc:  # malformed kwargs JSON
                    failed.append(f"{pt.name}: {exc}")
                else:
                    done.append(f"{pt.name} → {run.celery_task_id}")
        _report(self, request, done, failed, "Enqueued")


for _model, _admin in (
    (ClockedSchedule, beat_admin.ClockedScheduleAdmin),
    (CrontabSchedule, beat_admin.CrontabScheduleAdmin),
    (SolarSchedule, beat_admin.SolarScheduleAdmin),
    (IntervalSchedule, beat_admin.IntervalScheduleAdmin),
):
    admin.site.unregister(_model)
    admin.site.register(_model, type(_admin.__name__, (PlatformAdminOnlyMixin, _admin), {}))

# "Celery Results" (task and group results) would always be empty: results go to Redis (CELERY_RESULT_BACKEND),
# and the run's outcome is in the TaskRun ledger ("Task runs"). django_celery_results stays installed only for
# its migrations' tables; its admin is removed rather than offering an empty list and an "Add" button.
for _model in (TaskResult, GroupResult):
    admin.site.unregister(_model)


def runs_operable(modeladmin, request, queryset, *, path: str = "account"):
    """The rows of `queryset` (runs, or dead letters with path "run__account") the user operates: the others
    (another team's, or organisation-wide for a non platform admin) are named in a warning and left alone."""
    from providers_app.selectors import visible_to

    allowed = visible_to(queryset, request.user, account_path=path, role=Role.OPERATOR, permission="view")
    refused = queryset.exclude(pk__in=allowed.values("pk")).count()
    if refused:
        modeladmin.message_user(
            request,
            f"{refused} left alone: you are not an operator of their account's team "
            "(runs of no single account are for platform admins)",
            messages.WARNING,
        )
    return allowed


# --- The TaskRun audit trail ---


class RunChildInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = TaskRun
    fk_name = "parent"
    fields = ("child", "child_account", "state_badge", "enqueued_at", "finished_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    verbose_name = "child run"
    verbose_name_plural = "child runs (fan-out)"

    def get_queryset(self, request):
        from .selectors import runs_for

        return super().get_queryset(request).filter(pk__in=runs_for(request.user, permission=None).values("pk"))

    @admin.display(description="run")
    def child(self, obj):
        return run_link(obj)

    @admin.display(description="account")
    def child_account(self, obj):
        return account_label(obj)

    @admin.display(description="state")
    def state_badge(self, obj):
        return state_badge(obj.state, obj.result)


@admin.register(TaskRun)
class TaskRunAdmin(TeamScopedAdminMixin, TriggerPermissionMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    # Fits 1440 px: the queue, start time and correlation id are on the run's page (and searchable).
    list_display = (
        "task_name",
        "account_column",
        "state_badge",
        "trigger_column",
        "enqueued_at",
        "duration_column",
        "parent_column",
    )
    list_display_links = ("task_name",)
    list_filter = (
        "state",
        ("task_name", admin.AllValuesFieldListFilter),
        "triggered_by",
        ("queue", admin.AllValuesFieldListFilter),
        ("account", admin.RelatedOnlyFieldListFilter),
        "enqueued_at",
    )
    search_fields = ("celery_task_id", "correlation_id")
    search_help_text = "Exact Celery task id or correlation id"
    list_select_related = ("user", "account", "parent")
    list_per_page = 50
    # COUNT(*) over a large ledger on every page view is not worth it.
    show_full_result_count = False
    # "Show counts" would count every option of every filter over the whole table (millions of rows): off.
    show_facets = admin.ShowFacets.NEVER
    actions = ("cancel_runs", "run_again")
    inlines = (RunChildInline,)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_name",
                    "account_name",
                    "celery_task_id",
                    "state_badge",
                    "queue",
                    "worker",
                    "correlation_id",
                )
            },
        ),
        ("Trigger", {"fields": ("triggered_by", "trigger_detail", "user", "parent_link", "dead_letter_link")}),
        ("Timing", {"fields": ("enqueued_at", "started_at", "finished_at", "duration", "retries", "redeliveries")}),
        ("Input", {"fields": ("args_pretty", "kwargs_pretty")}),
        ("Outcome", {"fields": ("result_pretty", "error_type", "error", "error_traceback")}),
    )
    readonly_fields = (
        "task_name",
        "account_name",
        "celery_task_id",
        "state_badge",
        "queue",
        "worker",
        "correlation_id",
        "triggered_by",
        "trigger_detail",
        "user",
        "parent_link",
        "dead_letter_link",
        "enqueued_at",
        "started_at",
        "finished_at",
        "duration",
        "retries",
        "redeliveries",
        "args_pretty",
        "kwargs_pretty",
        "result_pretty",
        "error_type",
        "error",
        "error_traceback",
    )

    def get_fieldsets(self, request, obj=None):
        # The traceback (install paths, code) and the worker (host and pid) are for platform admins only.
        if is_platform_admin(request.user):
            return self.fieldsets
        hidden = {"error_traceback", "worker"}
        return [
            (name, {**opts, "fields": [f for f in opts["fields"] if f not in hidden]}) for name, opts in self.fieldsets
        ]

    def get_search_results(self, request, queryset, search_term):
        # Ids are matched exactly so the unique / btree indexes serve the lookup on a large ledger.
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(celery_task_id=term) | queryset.filter(correlation_id=term), False

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return state_badge(obj.state, obj.result)

    @admin.display(description="by")
    def trigger_who(self, obj):
        return obj.user.get_username() if obj.user_id else obj.trigger_detail

    @admin.display(description="account", ordering="account__name")
    def account_column(self, obj):
        return account_label(obj)

    @admin.display(description="trigger", ordering="triggered_by")
    def trigger_column(self, obj):
        if obj.triggered_by == TriggerKind.PARENT:
            return "fan-out"
        who = obj.user.get_username() if obj.user_id else obj.trigger_detail
        return f"{obj.triggered_by}: {who}" if who else obj.triggered_by

    @admin.display(description="duration", ordering="duration_ms")
    def duration_column(self, obj):
        retries = f" · {obj.retries} retr{'y' if obj.retries == 1 else 'ies'}" if obj.retries else ""
        return f"{format_duration(obj.duration_ms)}{retries}"

    @admin.display(description="parent")
    def parent_column(self, obj):
        if obj.parent_id is None:
            return "—"
        url = reverse("admin:tasks_app_taskrun_change", args=[obj.parent_id])
        return format_html('<a href="{}">{}</a>', url, obj.parent.task_name)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj):
        return format_duration(obj.duration_ms)

    @admin.display(description="parent run")
    def parent_link(self, obj):
        return run_link(obj.parent)

    @admin.display(description="account")
    def account_name(self, obj):
        return account_label(obj)

    @admin.display(description="dead letter")
    def dead_letter_link(self, obj):
        letter = DeadLetter.objects.filter(run=obj).only("id").first()
        if letter is None:
            return "—"
        url = reverse("admin:tasks_app_deadletter_change", args=[letter.pk])
        return format_html('<a href="{}">dead letter #{}</a>', url, letter.pk)

    @admin.display(description="args")
    def args_pretty(self, obj):
        return pretty_json(obj.args)

    @admin.display(description="kwargs")
    def kwargs_pretty(self, obj):
        return pretty_json(obj.kwargs)

    @admin.display(description="result")
    def result_pretty(self, obj):
        return pretty_json(obj.result)

    @admin.action(description="Cancel selected runs", permissions=["trigger"])
    def cancel_runs(self, request, queryset):
        done, failed = [], []
        queryset = runs_operable(self, request, queryset)
        for celery_task_id in queryset.values_list("celery_task_id", flat=True):
            outcome = run_cancel(celery_task_id=celery_task_id)
            (done if outcome.cancelled else failed).append(
                celery_task_id if outcome.cancelled else f"{celery_task_id} {outcome.message}"
            )
        _report(self, request, done, failed, "Cancelled")

    @admin.action(description="Run again", permissions=["trigger"])
    def run_again(self, request, queryset):
        done, failed = [], []
        queryset = runs_operable(self, request, queryset)
        with transaction.atomic():
            for run in queryset.select_related(None).only("task_name", "kwargs", "celery_task_id"):
                try:
                    new = task_enqueue(
                        task_name=run.task_name,
                        kwargs=run.kwargs,
                        triggered_by=TriggerKind.ADMIN,
                        user=request.user,
                        trigger_detail=f"run again of {run.celery_task_id}",
                    )
                except UnknownTask as exc:
                    failed.append(str(exc))
                else:
                    done.append(f"{run.task_name} → {new.celery_task_id}")
        _report(self, request, done, failed, "Enqueued")


class ReplayedFilter(admin.SimpleListFilter):
    title = "replayed"
    parameter_name = "replayed"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(replayed_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(replayed_at__isnull=True)
        return queryset


@admin.register(DeadLetter)
class DeadLetterAdmin(TeamScopedAdminMixin, TriggerPermissionMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    scope_path = "run__account"
    list_display = (
        "task_name",
        "letter_account",
        "error_type",
        "short_error",
        "created_at",
        "replayed_at",
        "original_run",
    )
    list_filter = (("task_name", admin.AllValuesFieldListFilter), "error_type", ReplayedFilter, "created_at")
    search_fields = ("run__celery_task_id", "task_name")
    list_select_related = ("run", "run__account")
    actions = ("replay",)
    fields = (
        "task_name",
        "queue",
        "original_run",
        "kwargs_pretty",
        "error_type",
        "error",
        "retries",
        "created_at",
        "replayed_at",
        "replay_link",
    )
    readonly_fields = fields

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.error if len(obj.error) <= 100 else obj.error[:100] + "…"

    @admin.display(description="account")
    def letter_account(self, obj):
        return account_label(obj.run)

    @admin.display(description="run")
    def original_run(self, obj):
        return run_link(obj.run)

    @admin.display(description="replay run")
    def replay_link(self, obj):
        return run_link(obj.replay_run)

    @admin.display(description="kwargs")
    def kwargs_pretty(self, obj):
        return pretty_json(obj.kwargs)

    @admin.action(description="Replay", permissions=["trigger"])
    def replay(self, request, queryset):
        done, failed = [], []
        queryset = runs_operable(self, request, queryset, path="run__account")
        for letter_id in queryset.values_list("id", flat=True):
            try:
                run = dead_letter_replay(dead_letter_id=letter_id, user=request.user, triggered_by=TriggerKind.ADMIN)
            except UnknownTask as exc:
                failed.append(f"#{letter_id}: {exc}")
            else:
                done.append(f"#{letter_id} → {run.celery_task_id}")
        _report(self, request, done, failed, "Replayed")


# --- Retention: one policy per data class, edited here; dry runs and cleanups go through the ledger ---


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(PlatformAdminOnlyMixin, TriggerPermissionMixin, admin.ModelAdmin):
    list_display = (
        "data_class",
        "enabled",
        "days",
        "minimum_days",
        "last_dry_run_rows",
        "last_dry_run_oldest",
        "last_dry_run_at",
        "last_deleted_rows",
        "last_cleanup_at",
    )
    list_editable = ("enabled", "days")
    fields = (
        "data_class",
        "enabled",
        "days",
        "minimum_days",
        "last_dry_run_at",
        "last_dry_run_rows",
        "last_dry_run_oldest",
        "last_cleanup_at",
        "last_deleted_rows",
        "updated_at",
    )
    readonly_fields = tuple(f for f in fields if f not in ("enabled", "days"))
    actions = ("dry_run", "clean_up_now")

    def has_add_permission(self, request):
        return False  # one row per data class, created by a migration (and by the cleanup if one is missing)

    def has_delete_permission(self, request, obj=None):
        return False  # disable a policy instead

    @admin.display(description="minimum days")
    def minimum_days(self, obj):
        return obj.min_days

    def _enqueue(self, request, queryset, *, dry_run: bool) -> None:
        classes = sorted(queryset.values_list("data_class", flat=True))
        run = task_enqueue(
            task_name="cleanup_old_data",
            kwargs={"dry_run": dry_run, "classes": classes},
            triggered_by=TriggerKind.ADMIN,
            user=request.user,
        )
        what = "Dry run" if dry_run else "Cleanup"
        self.message_user(
            request,
            format_html(
                "{} of {} enqueued as {}; its counts appear here and in the run when it finishes.",
                what,
                ", ".join(classes),
                run_link(run),
            ),
            messages.SUCCESS,
        )

    @admin.action(description="Dry run: count what would be deleted", permissions=["trigger"])
    def dry_run(self, request, queryset):
        self._enqueue(request, queryset, dry_run=True)

    @admin.action(description="Clean up now (delete what is past retention)", permissions=["trigger"])
    def clean_up_now(self, request, queryset):
        self._enqueue(request, queryset, dry_run=False)


from . import admin_tokens  # noqa: E402,F401  (the JWT blacklist's admin, without the tokens themselves)

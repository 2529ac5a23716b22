"""The work: the TaskRun ledger (audit trail and source of truth) and the dead-letter store."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class TriggerKind(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    API = "api", "API user"
    ADMIN = "admin", "Admin user"
    COMMAND = "command", "Command"
    PARENT = "parent", "Parent task"
    RECONCILER = "reconciler", "Reconciler"
    REPLAY = "replay", "Dead-letter replay"
    OTHER = "other", "Other"


class RunState(models.TextChoices):
    QUEUED = "QUEUED", "Queued"
    STARTED = "STARTED", "Started"
    RETRY = "RETRY", "Waiting to retry"
    SUCCESS = "SUCCESS", "Succeeded"
    FAILURE = "FAILURE", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"


ACTIVE_STATES = (RunState.QUEUED, RunState.STARTED, RunState.RETRY)
FINAL_STATES = (RunState.SUCCESS, RunState.FAILURE, RunState.CANCELLED)


class TaskRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_name = models.CharField(max_length=200)
    celery_task_id = models.CharField(max_length=255)
    queue = models.CharField(max_length=100, blank=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    triggered_by = models.CharField(max_length=16, choices=TriggerKind.choices, default=TriggerKind.OTHER)
    # Who exactly: the user name, schedule name, command name or parent run id.
    trigger_detail = models.CharField(max_length=255, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # The cloud account the run concerns (kwargs["account_id"]), for tenancy: who may see it. None: organisation-
    # wide (a fan-out parent, retention, a budget check), which only platform admins see.
    account = models.ForeignKey(
        "providers_app.CloudAccount", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    correlation_id = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=RunState.choices, default=RunState.QUEUED)
    enqueued_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    retries = models.IntegerField(default=0)
    # Times the reconciler or a redelivery had to start this run again after it was lost.
    redeliveries = models.IntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    # The message a user can act on; the traceback (install paths, code) apart, shown to platform admins only.
    error = models.TextField(blank=True)
    error_type = models.CharField(max_length=200, blank=True)
    error_traceback = models.TextField(blank=True)

    class Meta:
        ordering = ["-enqueued_at"]
        # Every enqueue, claim and finish writes each of these (a state change is never a HOT update), so
        # only indexes that a query uses: no per-column `_like` pattern indexes, no `state` alone.
        indexes = [
            models.Index(fields=["state", "enqueued_at"], name="taskrun_state_enqueued_idx"),
            models.Index(fields=["task_name", "enqueued_at"], name="taskrun_task_enqueued_idx"),
            models.Index(fields=["correlation_id"], name="taskrun_correlation_idx"),
        ]
        # The claim's ON CONFLICT target; a constraint rather than unique=True, which adds a second `_like` index.
        constraints = [models.UniqueConstraint(fields=["celery_task_id"], name="taskrun_celery_task_id_uniq")]
        permissions = [("trigger_tasks", "Can trigger and cancel tasks")]

    def __str__(self) -> str:
        return f"{self.task_name} {self.celery_task_id} {self.state}"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES


class DeadLetter(models.Model):
    """A task that failed for good (permanent error or retries exhausted); replay enqueues it again."""

    run = models.OneToOneField(TaskRun, on_delete=models.CASCADE, related_name="dead_letter")
    task_name = models.CharField(max_length=200, db_index=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, blank=True)
    error = models.TextField()
    error_type = models.CharField(max_length=200, blank=True)
    retries = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replay_run = models.ForeignKey(TaskRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.task_name} failed: {self.error[:80]}"


class RetentionDataClass(models.TextChoices):
    COST_LINES = "cost_lines", "Raw cost lines"
    DAILY_ROLLUPS = "daily_rollups", "Daily rollups (cost and tag rollups)"
    TASK_RUNS = "task_runs", "Finished task runs (and their dead letters)"
    TASK_RESULTS = "task_results", "Celery task results"
    RESOLVED_ALERTS = "resolved_alerts", "Resolved budget alerts"
    CLOSED_RECOMMENDATIONS = "closed_recommendations", "Closed and dismissed recommendations"
    TERMINATED_RESOURCES = "terminated_resources", "Terminated resources"
    RESOLVED_ANOMALIES = "resolved_anomalies", "Resolved and false-positive anomalies"


# The shortest retention each class accepts, and why: below it, something that reads the class breaks.
RETENTION_MIN_DAYS = {
    # optimisation reads 30 days of lines, realised savings 30 days before and after "done"; late data
    RetentionDataClass.COST_LINES: 90,
    # annual budgets and year-over-year anomaly baselines read a full year of rollups
    RetentionDataClass.DAILY_ROLLUPS: 400,
    RetentionDataClass.TASK_RUNS: 7,  # the audit trail of the last week at least
    RetentionDataClass.TASK_RESULTS: 1,  # callers polling a result must find it
    RetentionDataClass.RESOLVED_ALERTS: 30,  # one alert per threshold per period: keep the current period's
    RetentionDataClass.CLOSED_RECOMMENDATIONS: 30,  # a dismissal must outlive short gaps in the findings
    RetentionDataClass.TERMINATED_RESOURCES: 60,  # "billed after termination" joins 30 days of late cost lines
    RetentionDataClass.RESOLVED_ANOMALIES: 30,
}


class RetentionPolicy(models.Model):
    """How long one data class is kept; `cleanup_old_data` deletes what is older. One row per class."""

    data_class = models.CharField(max_length=32, choices=RetentionDataClass.choices, unique=True)
    enabled = models.BooleanField(default=True, help_text="Off: the class is kept forever.")
    days = models.PositiveIntegerField(help_text="Rows older than this many days are deleted.")
    updated_at = models.DateTimeField(auto_now=True)
    # The latest outcomes, so the admin list shows what a dry run found and what the last cleanup deleted.
    last_dry_run_at = models.DateTimeField(null=True, blank=True)
    last_dry_run_rows = models.BigIntegerField(null=True, blank=True)
    last_dry_run_oldest = models.DateTimeField(null=True, blank=True)
    last_cleanup_at = models.DateTimeField(null=True, blank=True)
    last_deleted_rows = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["data_class"]
        verbose_name_plural = "retention policies"
        constraints = [models.CheckConstraint(condition=models.Q(days__gte=1), name="retention_days_positive")]

    def __str__(self) -> str:
        return f"{self.get_data_class_display()}: {f'{self.days} days' if self.enabled else 'kept forever'}"

    @property
    def min_days(self) -> int:
        return RETENTION_MIN_DAYS.get(self.data_class, 1)

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.days is not None and self.days < self.min_days:
            raise ValidationError(
                {"days": f"{self.get_data_class_display()} must be kept at least {self.min_days} days."}
            )

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
    error = models.TextField(blank=True)
    error_type = models.CharField(max_length=200, blank=True)

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

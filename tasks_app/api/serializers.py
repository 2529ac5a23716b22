"""Input and output shapes of the task API; validation of what a client may ask for, nothing more."""

import re

from rest_framework import serializers

from costs_app.models import Budget
from costs_app.selectors import budgets_for
from providers_app.models import Role
from providers_app.selectors import accounts_for, is_platform_admin

from ..models import DeadLetter, RetentionDataClass, RunState, TaskRun, TriggerKind
from ..selectors import ACTIVE_RUNS_DEFAULT_LIMIT, ACTIVE_RUNS_MAX_LIMIT

PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo ("acount_id") is a 400, not a silent fan-out to every account."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


# Billing periods the API accepts: the years budgets may cover too (costs_app.models.BUDGET_DATE_MIN/MAX).
PERIOD_YEARS = (2000, 2100)


def validate_period(value: str) -> str:
    if not PERIOD_RE.match(value):
        raise serializers.ValidationError("Use the form YYYY-MM, e.g. 2024-09.")
    if not PERIOD_YEARS[0] <= int(value[:4]) <= PERIOD_YEARS[1]:
        raise serializers.ValidationError(f"The year must be between {PERIOD_YEARS[0]} and {PERIOD_YEARS[1]}.")
    return value


# --- trigger requests ---------------------------------------------------------------------------


def _request_user(serializer: serializers.Serializer):
    request = serializer.context.get("request")
    return getattr(request, "user", None)


class AccountTaskRequest(StrictSerializer):
    account_id = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Run for this cloud account only (one where you are an operator); omitting it runs for every "
        "active account, which only platform admins may do.",
    )

    def names_scope(self) -> bool:
        """Whether the request names what it runs for (else: every account, an organisation-wide run)."""
        return self.validated_data.get("account_id") is not None

    def run_account_id(self) -> int | None:
        """The account the run concerns when its kwargs name none (see BudgetMonitorRequest)."""
        return None

    def validate_account_id(self, value: int | None) -> int | None:
        if value is None:
            return value
        # Another team's account answers exactly as one that does not exist.
        accounts = accounts_for(_request_user(self), role=Role.OPERATOR)
        account = accounts.filter(id=value).values("is_active").first()
        if account is None:
            raise serializers.ValidationError(f"Cloud account {value} does not exist.")
        if not account["is_active"]:
            raise serializers.ValidationError(f"Cloud account {value} is not active.")
        return value


class CostSyncRequest(AccountTaskRequest):
    billing_period = serializers.CharField(
        required=False,
        allow_null=True,
        validators=[validate_period],
        help_text="Billing period YYYY-MM to (re)load; omit for the open periods.",
    )
    force = serializers.BooleanField(
        required=False,
        help_text="Reload periods whose export files have not changed since their last load.",
    )


class BudgetMonitorRequest(AccountTaskRequest):
    budget_id = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Evaluate this budget only."
    )

    def names_scope(self) -> bool:
        return super().names_scope() or self.validated_data.get("budget_id") is not None

    def run_account_id(self) -> int | None:
        """A check of a budget of one account concerns that account: its team sees the run."""
        budget_id = self.validated_data.get("budget_id")
        if self.validated_data.get("account_id") is not None or budget_id is None:
            return None
        scope = Budget.accounts.through.objects.filter(budget_id=budget_id)
        accounts = list(scope.values_list("cloudaccount_id", flat=True)[:2])
        return accounts[0] if len(accounts) == 1 else None

    def validate_budget_id(self, value: int | None) -> int | None:
        budgets = budgets_for(_request_user(self), role=Role.OPERATOR, permission=None)
        if value is not None and not budgets.filter(id=value).exists():
            raise serializers.ValidationError(f"Budget {value} does not exist.")
        return value


class CleanupRequest(StrictSerializer):
    def names_scope(self) -> bool:
        return False  # retention is organisation-wide

    def run_account_id(self) -> int | None:
        return None

    dry_run = serializers.BooleanField(
        required=False, default=False, help_text="Count what would be deleted without deleting it."
    )
    classes = serializers.ListField(
        child=serializers.ChoiceField(choices=RetentionDataClass.choices),
        required=False,
        allow_empty=False,
        help_text="Only these data classes (default: every class with an enabled retention policy).",
    )


# --- runs ---------------------------------------------------------------------------------------


class TaskAcceptedSerializer(serializers.Serializer):
    task_id = serializers.CharField(help_text="The Celery task id; use it with status/ and cancel/.")
    run_id = serializers.UUIDField(help_text="The TaskRun (audit trail) id.")
    task_name = serializers.CharField()
    queue = serializers.CharField()
    state = serializers.ChoiceField(choices=RunState.choices)
    status_url = serializers.URLField()
    correlation_id = serializers.CharField()


class TaskConflictSerializer(TaskAcceptedSerializer):
    detail = serializers.CharField(help_text="Why nothing was queued, naming the run that is already active.")


class TaskRunSerializer(serializers.ModelSerializer):
    task_id = serializers.CharField(source="celery_task_id")
    user = serializers.SerializerMethodField()
    status_url = serializers.SerializerMethodField()
    worker = serializers.SerializerMethodField(help_text="host/pid of the worker; platform admins only.")
    error_traceback = serializers.SerializerMethodField(
        help_text="The traceback of an unexpected failure; platform admins only (others see the message, error)."
    )

    class Meta:
        model = TaskRun
        fields = [
            "id",
            "task_id",
            "task_name",
            "queue",
            "args",
            "kwargs",
            "state",
            "triggered_by",
            "trigger_detail",
            "user",
            "parent",
            "correlation_id",
            "enqueued_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "worker",
            "retries",
            "redeliveries",
            "result",
            "error",
            "error_type",
            "error_traceback",
            "status_url",
        ]
        read_only_fields = fields

    def _platform_admin(self) -> bool:
        return is_platform_admin(_request_user(self))

    def get_worker(self, run: TaskRun) -> str:
        return run.worker if self._platform_admin() else ""

    def get_error_traceback(self, run: TaskRun) -> str:
        return run.error_traceback if self._platform_admin() else ""

    def get_user(self, run: TaskRun) -> str | None:
        return run.user.get_username() if run.user_id else None

    def get_status_url(self, run: TaskRun) -> str:
        return status_url(self.context.get("request"), run.celery_task_id)


def status_url(request, task_id: str) -> str:
    from django.urls import reverse

    path = reverse("tasks-status", kwargs={"task_id": task_id})
    return request.build_absolute_uri(path) if request is not None else path


class RunFilterSerializer(StrictSerializer):
    task_name = serializers.CharField(required=False)
    state = serializers.ChoiceField(choices=RunState.choices, required=False)
    triggered_by = serializers.ChoiceField(choices=TriggerKind.choices, required=False)
    correlation_id = serializers.CharField(required=False, max_length=64)
    account_id = serializers.IntegerField(required=False, min_value=1, help_text="Runs whose kwargs name this account.")
    # The paginator's own parameters pass through untouched.
    limit = serializers.IntegerField(required=False, min_value=0)
    offset = serializers.IntegerField(required=False, min_value=0)


class TaskStatusSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    state = serializers.CharField(help_text="The ledger's state when the run is recorded, else Celery's.")
    celery_state = serializers.CharField(
        allow_null=True, help_text="What the result backend says (PENDING also means unknown); null if unreadable."
    )
    known_to = serializers.ListField(child=serializers.ChoiceField(choices=["ledger", "celery"]))
    run = TaskRunSerializer(allow_null=True, help_text="The TaskRun, when the ledger has one.")
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    date_done = serializers.DateTimeField(allow_null=True)


class WorkerTaskSerializer(serializers.Serializer):
    worker = serializers.CharField()
    kind = serializers.ChoiceField(choices=["active", "reserved", "scheduled"])
    task_id = serializers.CharField()
    name = serializers.CharField()
    args = serializers.JSONField(allow_null=True)
    kwargs = serializers.JSONField(allow_null=True)
    time_start = serializers.FloatField(allow_null=True)
    eta = serializers.CharField(allow_null=True)
    run_id = serializers.UUIDField(allow_null=True)


class ActiveTasksQuerySerializer(serializers.Serializer):
    live = serializers.BooleanField(
        required=False, default=False, help_text="Ask the workers by broadcast (~1 s) instead of their snapshots."
    )
    limit = serializers.IntegerField(
        required=False,
        min_value=0,
        default=ACTIVE_RUNS_DEFAULT_LIMIT,
        help_text=f"How many runs to list (default {ACTIVE_RUNS_DEFAULT_LIMIT}; above {ACTIVE_RUNS_MAX_LIMIT} is "
        f"capped to {ACTIVE_RUNS_MAX_LIMIT}). The counts cover every active run whatever the limit.",
    )

    def validate_limit(self, value: int) -> int:
        return min(value, ACTIVE_RUNS_MAX_LIMIT)


class ActiveRunCountSerializer(serializers.Serializer):
    task_name = serializers.CharField()
    state = serializers.CharField(help_text="QUEUED, STARTED or RETRY.")
    count = serializers.IntegerField()


class ActiveTasksSerializer(serializers.Serializer):
    runs = TaskRunSerializer(
        many=True,
        help_text="Runs the ledger holds as QUEUED, STARTED or RETRY: STARTED first, then RETRY, then QUEUED, oldest "
        "first within each; at most `limit` of them.",
    )
    runs_total = serializers.IntegerField(help_text="How many active runs the ledger holds in all (your scope).")
    counts = ActiveRunCountSerializer(many=True, help_text="Active runs per task and state, all of them.")
    limit = serializers.IntegerField(help_text="The limit applied to `runs`.")
    worker_tasks = WorkerTaskSerializer(many=True, help_text="What the live workers report.")
    workers = serializers.ListField(child=serializers.CharField(), help_text="Workers that answered.")
    inspect_error = serializers.CharField(allow_blank=True)


class WorkerStatsSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    uptime = serializers.IntegerField(allow_null=True, help_text="Seconds.")
    pool = serializers.CharField()
    concurrency = serializers.IntegerField(allow_null=True)
    processes = serializers.ListField(child=serializers.IntegerField())
    prefetch_count = serializers.IntegerField(allow_null=True)
    processed = serializers.IntegerField(help_text="Tasks processed since the worker started.")
    processed_by_task = serializers.DictField(child=serializers.IntegerField())
    queues = serializers.ListField(child=serializers.CharField())


class WorkersStatsResponseSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    workers = WorkerStatsSerializer(many=True)


class CancelResponseSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    cancelled = serializers.BooleanField()
    message = serializers.CharField()
    state = serializers.CharField(allow_null=True, help_text="The run's ledger state after the request.")
    run_id = serializers.UUIDField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class HealthCheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    latency_ms = serializers.FloatField()
    error = serializers.CharField(required=False)
    detail = serializers.CharField(required=False)
    count = serializers.IntegerField(required=False)
    names = serializers.ListField(child=serializers.CharField(), required=False)
    age_s = serializers.FloatField(required=False)
    max_age_s = serializers.IntegerField(required=False)
    leader = serializers.CharField(required=False, allow_blank=True)
    since = serializers.CharField(required=False, allow_blank=True)
    issues = serializers.ListField(child=serializers.DictField(), required=False)
    lag_s = serializers.FloatField(required=False)
    max_lag_s = serializers.FloatField(required=False)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded", "fail"])
    checks = serializers.DictField(child=HealthCheckSerializer())
    failing = serializers.ListField(child=serializers.CharField())
    degraded = serializers.ListField(child=serializers.CharField(), required=False)


class LivenessSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "fail"])


# --- dead letters -------------------------------------------------------------------------------


class DeadLetterSerializer(serializers.ModelSerializer):
    run_id = serializers.UUIDField(source="run.id")
    task_id = serializers.CharField(source="run.celery_task_id")
    correlation_id = serializers.CharField(source="run.correlation_id")
    replay_run_id = serializers.UUIDField(source="replay_run.id", allow_null=True, default=None)
    replay_state = serializers.CharField(source="replay_run.state", allow_null=True, default=None)

    class Meta:
        model = DeadLetter
        fields = [
            "id",
            "task_name",
            "run_id",
            "task_id",
            "correlation_id",
            "args",
            "kwargs",
            "queue",
            "error",
            "error_type",
            "retries",
            "created_at",
            "replayed_at",
            "replay_run_id",
            "replay_state",
        ]
        read_only_fields = fields


class DeadLetterFilterSerializer(StrictSerializer):
    task_name = serializers.CharField(required=False)
    replayed = serializers.BooleanField(required=False, allow_null=True, default=None)
    limit = serializers.IntegerField(required=False, min_value=0)
    offset = serializers.IntegerField(required=False, min_value=0)


# --- FOCUS export -------------------------------------------------------------------------------


class FocusExportQuerySerializer(StrictSerializer):
    account = serializers.CharField(help_text="The cloud account's name.")
    start = serializers.CharField(required=False, validators=[validate_period], help_text="First period, YYYY-MM.")
    end = serializers.CharField(required=False, validators=[validate_period], help_text="Last period, YYYY-MM.")
    format = serializers.ChoiceField(choices=["csv", "parquet"], default="csv")

    def validate_account(self, value: str):
        account = accounts_for(_request_user(self)).filter(name=value).first()
        if account is None:
            raise serializers.ValidationError(f"Cloud account {value!r} does not exist.")
        return account

    def validate(self, attrs):
        if attrs.get("start") and attrs.get("end") and attrs["start"] > attrs["end"]:
            raise serializers.ValidationError({"end": "The end period is before the start period."})
        return attrs

"""Task API views: each validates its input, calls one service or selector, and shapes the answer."""

import tempfile

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from costs_app.services.export import focus_export
from finops.api_permissions import HasModelPermission, IsPlatformAdmin, ModelPermissions
from finops.limits import TriggerUserThrottle
from providers_app.models import Role
from providers_app.selectors import is_platform_admin

from .. import selectors
from ..models import DeadLetter, TaskRun, TriggerKind
from ..services import health
from ..services.runs import dead_letter_replay, run_cancel, task_enqueue, task_enqueue_once
from . import serializers as s
from .answer_cache import active_answers
from .permissions import CanTriggerTasks

UNAUTHENTICATED = OpenApiResponse(s.ErrorSerializer, description="No or invalid credentials (JWT or session).")
FORBIDDEN = OpenApiResponse(s.ErrorSerializer, description="Lacks the tasks_app.trigger_tasks permission.")
THROTTLED = OpenApiResponse(
    s.ErrorSerializer, description="Too many requests (THROTTLE_* settings); Retry-After says when to try again."
)
TASK_ID = OpenApiParameter("task_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="The Celery task id.")


def _run_payload(request, run: TaskRun) -> dict:
    return {
        "task_id": run.celery_task_id,
        "run_id": run.id,
        "task_name": run.task_name,
        "queue": run.queue,
        "state": run.state,
        "status_url": s.status_url(request, run.celery_task_id),
        "correlation_id": run.correlation_id,
    }


def accepted_response(request, run: TaskRun) -> Response:
    return Response(s.TaskAcceptedSerializer(_run_payload(request, run)).data, status=status.HTTP_202_ACCEPTED)


def already_active_response(request, run: TaskRun) -> Response:
    """409 naming the run that already does what was asked: its ids, state and where to follow it."""
    payload = {
        **_run_payload(request, run),
        "detail": f"{run.task_name} with the same arguments is already {run.state.lower()} as run {run.id} "
        f"(task {run.celery_task_id}); nothing new was queued",
    }
    return Response(s.TaskConflictSerializer(payload).data, status=status.HTTP_409_CONFLICT)


class CachedJSON:
    """A serialized answer, rendered to JSON once however many requests it serves."""

    def __init__(self, data):
        self.data = data
        self.json = JSONRenderer().render(data)

    def response(self) -> Response:
        return _PreRenderedResponse(self.data, rendered=self.json)


class _PreRenderedResponse(Response):
    """Serves the pre-rendered bytes when plain JSON was negotiated; other renderers (the browsable API, JSON with
    an indent) render the data as usual."""

    def __init__(self, data, *, rendered: bytes):
        super().__init__(data)
        self._rendered = rendered

    @property
    def rendered_content(self):
        renderer = getattr(self, "accepted_renderer", None)
        if isinstance(renderer, JSONRenderer) and self.accepted_media_type == renderer.media_type:
            self["Content-Type"] = renderer.media_type
            return self._rendered
        return super().rendered_content


# --- triggers -----------------------------------------------------------------------------------


class TaskTriggerViewSet(viewsets.GenericViewSet):
    """Base of the trigger endpoints: enqueue one task through the ledger and answer 202."""

    permission_classes = [IsAuthenticated, CanTriggerTasks]
    throttle_classes = [TriggerUserThrottle]
    task_name = ""
    serializer_class = s.AccountTaskRequest

    @extend_schema(
        tags=["triggers"],
        responses={
            202: s.TaskAcceptedSerializer,
            400: OpenApiResponse(description="Invalid input, e.g. unknown or inactive account, bad period."),
            401: UNAUTHENTICATED,
            403: OpenApiResponse(
                s.ErrorSerializer,
                description="Lacks the tasks_app.trigger_tasks permission, or names no account (every account: "
                "platform admins only).",
            ),
            429: THROTTLED,
        },
    )
    def create(self, request):
        params = self.get_serializer(data=request.data)
        params.is_valid(raise_exception=True)
        if not params.names_scope() and not is_platform_admin(request.user):
            # No account means every account, other teams' included.
            raise PermissionDenied(
                "Without account_id this runs for every account of the organisation, which only platform admins "
                "may do: name one of your accounts (account_id)."
            )
        run = task_enqueue(
            task_name=self.task_name,
            kwargs=dict(params.validated_data),
            triggered_by=TriggerKind.API,
            user=request.user,
            correlation_id=request.correlation_id,
            account_id=params.run_account_id(),
        )
        return accepted_response(request, run)


class CostDataSyncViewSet(TaskTriggerViewSet):
    """Enqueue `sync_provider_cost_data` (queue cost_sync): one account, or every active account."""

    task_name = "sync_provider_cost_data"
    serializer_class = s.CostSyncRequest

    @extend_schema(
        tags=["triggers"],
        description="A forced sync of an account (`force` and `account_id`) while the same forced sync (same "
        "account and billing period) is queued, running or waiting to retry is answered 409 with that run.",
        responses={
            202: s.TaskAcceptedSerializer,
            400: OpenApiResponse(description="Invalid input, e.g. unknown or inactive account, bad period."),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            409: s.TaskConflictSerializer,
            429: THROTTLED,
        },
    )
    def create(self, request):
        params = self.get_serializer(data=request.data)
        params.is_valid(raise_exception=True)
        query = params.validated_data
        if not (query.get("force") and query.get("account_id")):
            return super().create(request)
        # A forced reload downloads and rewrites whole periods: one at a time per account and period is enough.
        outcome = task_enqueue_once(
            task_name=self.task_name,
            kwargs=dict(query),
            match={"account_id": query["account_id"], "force": True, "billing_period": query.get("billing_period")},
            triggered_by=TriggerKind.API,
            user=request.user,
            correlation_id=request.correlation_id,
        )
        if not outcome.created:
            return already_active_response(request, outcome.run)
        return accepted_response(request, outcome.run)


class ResourceDiscoveryViewSet(TaskTriggerViewSet):
    """Enqueue `discover_provider_resources` (queue resource_discovery)."""

    task_name = "discover_provider_resources"


class BudgetMonitorViewSet(TaskTriggerViewSet):
    """Enqueue `monitor_budget` (queue monitoring): every active budget, one account's, or one budget."""

    task_name = "monitor_budget"
    serializer_class = s.BudgetMonitorRequest


class OptimizationViewSet(TaskTriggerViewSet):
    """Enqueue `analyze_optimization_opportunities` (queue analysis)."""

    task_name = "analyze_optimization_opportunities"


class AnomalyViewSet(TaskTriggerViewSet):
    """Enqueue `detect_cost_anomalies` (queue analysis)."""

    task_name = "detect_cost_anomalies"


class CleanupViewSet(TaskTriggerViewSet):
    """Enqueue `cleanup_old_data` (queue maintenance); `dry_run` only counts what would go."""

    task_name = "cleanup_old_data"
    serializer_class = s.CleanupRequest
    permission_classes = [IsAuthenticated, CanTriggerTasks, IsPlatformAdmin]  # retention is organisation-wide


# --- monitoring ---------------------------------------------------------------------------------


class TaskMonitorViewSet(viewsets.ViewSet):
    """Status, active tasks, workers and cancel: the ledger merged with what Celery reports."""

    @extend_schema(
        tags=["monitor"],
        summary="Status of one task",
        description="The TaskRun (state, timings, retries, result, error, trigger, correlation id) merged with "
        "the Celery result backend's state. 404 when neither the ledger nor the backend knows the id.",
        parameters=[TASK_ID],
        responses={200: s.TaskStatusSerializer, 401: UNAUTHENTICATED, 404: s.ErrorSerializer},
    )
    def status(self, request, task_id: str):
        found = selectors.task_status(task_id=task_id, user=request.user)
        if found is None:
            raise NotFound(f"No task {task_id} in the ledger or the result backend.")
        return Response(s.TaskStatusSerializer(found, context={"request": request}).data)

    @extend_schema(
        tags=["monitor"],
        summary="Active tasks",
        description="Runs the ledger holds as QUEUED, STARTED or RETRY — counted per task and state, and listed up "
        "to `limit` (running first, then the oldest) — plus, for platform admins, the tasks live workers report as "
        "active, reserved or scheduled, from the snapshot each worker writes at its heartbeat (at most ~2 s old). "
        "Each web process serves the same answer to callers of the same scope for TASKS_ACTIVE_CACHE_SECONDS "
        "(default 1 s), so it is at most that much (plus the time one refresh takes) older than the ledger. "
        "`?live=true` (or TASKS_ACTIVE_LIVE) asks the workers by broadcast instead (~1 s timeout, never cached).",
        parameters=[s.ActiveTasksQuerySerializer],
        responses={
            200: s.ActiveTasksSerializer,
            400: OpenApiResponse(description="`limit` not a whole number >= 0, or `live` not a boolean."),
            401: UNAUTHENTICATED,
        },
    )
    def active(self, request):
        if request.query_params:
            params = s.ActiveTasksQuerySerializer(data=request.query_params)
            params.is_valid(raise_exception=True)
            limit, live = params.validated_data["limit"], params.validated_data["live"]
        else:  # a dashboard's poll: the defaults, without building a serializer (a third of a cached answer's time)
            limit, live = selectors.ACTIVE_RUNS_DEFAULT_LIMIT, False
        live = live or settings.TASKS_ACTIVE_LIVE
        admin = is_platform_admin(request.user)
        scope = selectors.runs_scope(request.user)  # the runs runs_for(user) would give, as a key

        def compute() -> CachedJSON:
            # From the key, not the user: what is stored under a scope is that scope's runs, whatever changes meanwhile.
            runs = selectors.runs_in_scope(scope)
            active = selectors.active_tasks(runs=runs, workers=admin, live=live, limit=limit)
            return CachedJSON(s.ActiveTasksSerializer(active, context={"request": request}).data)

        if live:  # a broadcast is asked for by name: never an older answer
            return compute().response()
        # admin: the workers' part and the admin-only fields; scheme and host: the status URLs are absolute.
        key = (scope, admin, limit, request.scheme, request.get_host())
        return active_answers.get(key, settings.TASKS_ACTIVE_CACHE_SECONDS, compute).response()

    @extend_schema(
        tags=["monitor"],
        summary="Worker statistics",
        description="One entry per worker answering a ping: pool, concurrency, tasks processed, queues consumed. "
        "An empty list when no worker answers; 503 only when the broker itself cannot be reached. "
        "Platform admins only (hostnames and pids).",
        responses={
            200: s.WorkersStatsResponseSerializer,
            401: UNAUTHENTICATED,
            403: s.ErrorSerializer,
            503: s.ErrorSerializer,
        },
    )
    def workers(self, request):
        try:
            workers = selectors.workers_stats()
        except selectors.BrokerUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(s.WorkersStatsResponseSerializer({"count": len(workers), "workers": workers}).data)

    @extend_schema(
        tags=["monitor"],
        summary="Cancel a task",
        description="A queued task never starts (its run is marked CANCELLED and the worker's claim refuses it); "
        "a running one is terminated (SIGTERM) and its run says CANCELLED. 200 when cancelled; 409 when the run "
        "already finished (nothing changed); 404 when neither the ledger nor the result backend knows the id.",
        parameters=[TASK_ID],
        responses={
            200: s.CancelResponseSerializer,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: s.ErrorSerializer,
            409: s.CancelResponseSerializer,
        },
    )
    def cancel(self, request, task_id: str):
        found = selectors.task_status(task_id=task_id, user=request.user, role=Role.OPERATOR)
        if found is None:
            raise NotFound(f"No task {task_id} in the ledger or the result backend.")
        if found.run is None and found.finished:
            # Not a ledger task and Celery already has its outcome: nothing left to revoke.
            outcome = {"cancelled": False, "message": f"already {found.state.lower()}", "run": found.run}
        else:
            result = run_cancel(celery_task_id=task_id)
            outcome = {"cancelled": result.cancelled, "message": result.message, "run": result.run}
        run = outcome["run"]
        payload = {
            "task_id": task_id,
            "cancelled": outcome["cancelled"],
            "message": outcome["message"],
            "state": run.state if run is not None else ("REVOKED" if outcome["cancelled"] else found.state),
            "run_id": run.id if run is not None else None,
        }
        code = status.HTTP_200_OK if outcome["cancelled"] else status.HTTP_409_CONFLICT
        return Response(s.CancelResponseSerializer(payload).data, status=code)

    def get_permissions(self):
        if self.action == "cancel":
            return [IsAuthenticated(), CanTriggerTasks()]
        if self.action == "workers":
            return [IsAuthenticated(), IsPlatformAdmin()]
        return [IsAuthenticated()]


class HealthView(APIView):
    @extend_schema(
        tags=["monitor"],
        summary="Task system health",
        description="Checks the database (SELECT 1), the broker (Redis PING), the result backend, the workers "
        "(at least one answers a control ping) and beat (its heartbeat is younger than BEAT_HEARTBEAT_MAX_AGE). "
        "503 names the failing checks in `failing`. With every component up, `degraded` (HTTP 200) names the "
        "checks where the ledger and reality disagree — runs queued but not in the broker, runs whose claim is "
        "no longer renewed, locks without a live holder, a read replica down or lagging (`replica`, present when "
        "DATABASE_REPLICA_URL is set; its reads then go to the primary) — each issue with since when. Only "
        "platform admins see each check's details (worker names, errors, runs); others get the status and each "
        "check's ok.",
        responses={200: s.HealthSerializer, 401: UNAUTHENTICATED, 503: s.HealthSerializer},
    )
    def get(self, request):
        report = health.system_health()
        if not is_platform_admin(request.user):
            report = {
                **report,
                "checks": {
                    name: {"ok": c["ok"], "latency_ms": c.get("latency_ms")} for name, c in report["checks"].items()
                },
            }
        code = status.HTTP_503_SERVICE_UNAVAILABLE if report["status"] == "fail" else status.HTTP_200_OK
        return Response(s.HealthSerializer(report).data, status=code)


class LivenessView(APIView):
    """Unauthenticated probe for load balancers: the web process's database and broker, no details."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["monitor"],
        summary="Liveness (no authentication)",
        responses={200: s.LivenessSerializer, 503: s.LivenessSerializer},
    )
    def get(self, request):
        alive = health.liveness()
        return Response(
            {"status": "ok" if alive else "fail"},
            status=status.HTTP_200_OK if alive else status.HTTP_503_SERVICE_UNAVAILABLE,
        )


# --- the ledger and dead letters ----------------------------------------------------------------


@extend_schema(tags=["runs"])
class TaskRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The audit trail: one TaskRun per task execution."""

    serializer_class = s.TaskRunSerializer
    queryset = TaskRun.objects.none()  # for the schema and the permission class; get_queryset() is the real one
    permission_classes = [IsAuthenticated, ModelPermissions]

    def get_queryset(self):
        runs = selectors.runs_for(self.request.user)
        if self.action == "list":
            params = s.RunFilterSerializer(data=self.request.query_params)
            params.is_valid(raise_exception=True)
            filters = {k: v for k, v in params.validated_data.items() if k not in ("limit", "offset")}
            return selectors.task_runs_list(runs=runs, **filters)
        return selectors.task_runs_list(runs=runs)

    @extend_schema(parameters=[s.RunFilterSerializer], responses={200: s.TaskRunSerializer(many=True), 400: None})
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


@extend_schema(tags=["runs"])
class DeadLetterViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Tasks that failed for good (permanent error or retries exhausted), replayable."""

    serializer_class = s.DeadLetterSerializer
    queryset = DeadLetter.objects.none()  # for the schema and the permission class; get_queryset() is the real one

    def get_queryset(self):
        if self.action == "replay":
            return selectors.dead_letters_list(
                letters=selectors.dead_letters_for(self.request.user, role=Role.OPERATOR)
            )
        letters = selectors.dead_letters_for(self.request.user)
        if self.action == "list":
            params = s.DeadLetterFilterSerializer(data=self.request.query_params)
            params.is_valid(raise_exception=True)
            return selectors.dead_letters_list(
                letters=letters,
                task_name=params.validated_data.get("task_name"),
                replayed=params.validated_data.get("replayed"),
            )
        return selectors.dead_letters_list(letters=letters)

    def get_permissions(self):
        if self.action == "replay":
            return [IsAuthenticated(), CanTriggerTasks()]
        return [IsAuthenticated(), ModelPermissions()]

    def get_throttles(self):
        return [TriggerUserThrottle()] if self.action == "replay" else []

    @extend_schema(parameters=[s.DeadLetterFilterSerializer], responses={200: s.DeadLetterSerializer(many=True)})
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        summary="Replay a dead letter",
        description="Enqueues the task again with the same arguments and correlation id (trigger: replay). "
        "409 while an earlier replay of this letter is still queued or running.",
        request=None,
        responses={
            202: s.TaskAcceptedSerializer,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: s.ErrorSerializer,
            409: s.ErrorSerializer,
            429: THROTTLED,
        },
    )
    @action(detail=True, methods=["post"])
    def replay(self, request, pk=None):
        letter = self.get_object()
        if letter.replay_run is not None and letter.replay_run.is_active:
            return Response(
                {"detail": f"replay {letter.replay_run.celery_task_id} is still {letter.replay_run.state.lower()}"},
                status=status.HTTP_409_CONFLICT,
            )
        return accepted_response(request, dead_letter_replay(dead_letter_id=letter.id, user=request.user))


# --- FOCUS export -------------------------------------------------------------------------------


class _IgnoreFormatParameter(DefaultContentNegotiation):
    """`?format=csv|parquet` names the export's file format here, not DRF's renderer override."""

    def select_renderer(self, request, renderers, format_suffix=None):
        renderer = renderers[0]
        return renderer, renderer.media_type


EXPORT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


class FocusExportView(APIView):
    content_negotiation_class = _IgnoreFormatParameter
    permission_classes = [IsAuthenticated, HasModelPermission.of("costs_app.view_costlineitem")]

    @extend_schema(
        tags=["costs"],
        summary="Export cost lines as FOCUS 1.2",
        description="Streams the account's stored cost lines for the period range as a FOCUS 1.2 CSV or Parquet "
        "file (the same writer as `manage.py export_focus`).",
        parameters=[s.FocusExportQuerySerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.BINARY,
            (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY,
            400: OpenApiResponse(description="Unknown account (or not one of yours), bad period or format."),
            401: UNAUTHENTICATED,
            403: OpenApiResponse(s.ErrorSerializer, description="Lacks costs_app.view_costlineitem."),
        },
    )
    def get(self, request):
        params = s.FocusExportQuerySerializer(data=request.query_params, context={"request": request})
        params.is_valid(raise_exception=True)
        query = params.validated_data
        fmt = query["format"]
        # An anonymous temporary file: the writer streams into it (COPY or Parquet batches), the response
        # streams it out, and the disk space is freed when FileResponse closes it, whatever happens.
        stream = tempfile.TemporaryFile(prefix="focus-export-")  # noqa: SIM115  (FileResponse closes it)
        try:
            focus_export(account=query["account"], start=query.get("start"), end=query.get("end"), out=stream, fmt=fmt)
        except BaseException:
            stream.close()
            raise
        stream.seek(0)
        name = f"focus-{query['account'].name}-{query.get('start') or 'all'}-{query.get('end') or 'all'}.{fmt}"
        return FileResponse(stream, as_attachment=True, filename=name, content_type=EXPORT_TYPES[fmt])

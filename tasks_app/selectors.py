"""Reads for the task API and commands: ledger queries, and what the result backend and workers report."""

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from celery import current_app
from django.conf import settings
from django.db.models import Case, Count, IntegerField, QuerySet, Value, When

from providers_app.models import Role
from providers_app.selectors import is_platform_admin, visibility_key, visible_for_key, visible_to

from .models import ACTIVE_STATES, DeadLetter, RunState, TaskRun

logger = logging.getLogger(__name__)

# How long a broadcast waits for workers that may not exist; every worker-facing read pays it once.
INSPECT_TIMEOUT = 1.0


class BrokerUnavailable(Exception):
    """The broker could not be asked (down or unreachable); the message says why."""


# --- the ledger ---------------------------------------------------------------------------------


def runs_for(user, *, role: Role = Role.VIEWER, permission: str | None = "view") -> QuerySet[TaskRun]:
    """Runs of the user's accounts (TaskRun.account); runs with no account are org-wide: platform admins only."""
    return visible_to(TaskRun.objects.all(), user, role=role, permission=permission)


def runs_scope(user) -> tuple:
    """A hashable key of the runs runs_for(user) returns (for caching answers per scope); runs_in_scope() gives them."""
    return visibility_key(user, TaskRun)


def runs_in_scope(scope: tuple) -> QuerySet[TaskRun]:
    return visible_for_key(TaskRun.objects.all(), scope)


def dead_letters_for(user, *, role: Role = Role.VIEWER, permission: str | None = "view") -> QuerySet[DeadLetter]:
    return visible_to(DeadLetter.objects.all(), user, account_path="run__account", role=role, permission=permission)


def task_runs_list(
    *,
    runs: QuerySet[TaskRun] | None = None,
    task_name: str | None = None,
    state: str | None = None,
    triggered_by: str | None = None,
    correlation_id: str | None = None,
    account_id: int | None = None,
) -> QuerySet[TaskRun]:
    """`runs`: the caller's scope (runs_for(user)); None only for operator-level callers (commands)."""
    runs = (TaskRun.objects.all() if runs is None else runs).select_related("user")
    if task_name:
        runs = runs.filter(task_name=task_name)
    if state:
        runs = runs.filter(state=state)
    if triggered_by:
        runs = runs.filter(triggered_by=triggered_by)
    if correlation_id:
        runs = runs.filter(correlation_id=correlation_id)
    if account_id is not None:
        runs = runs.filter(kwargs__account_id=account_id)
    return runs.order_by("-enqueued_at")


def task_run_get(*, run_id) -> TaskRun | None:
    return TaskRun.objects.select_related("user").filter(id=run_id).first()


def task_run_by_celery_id(*, celery_task_id: str) -> TaskRun | None:
    return TaskRun.objects.select_related("user").filter(celery_task_id=celery_task_id).first()


# Running first, then waiting to retry, then queued; oldest first within each: a backlog of queued runs (or a queue
# without a worker) never hides what is executing.
_ACTIVE_ORDER = Case(
    When(state=RunState.STARTED, then=Value(0)),
    When(state=RunState.RETRY, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)


def active_runs_list(*, runs: QuerySet[TaskRun] | None = None) -> QuerySet[TaskRun]:
    runs = TaskRun.objects.all() if runs is None else runs
    return runs.select_related("user").filter(state__in=ACTIVE_STATES).order_by(_ACTIVE_ORDER, "enqueued_at")


def active_runs_counts(*, runs: QuerySet[TaskRun] | None = None) -> list[dict]:
    """How many active runs per task and state: [{"task_name", "state", "count"}], by task then state."""
    runs = TaskRun.objects.all() if runs is None else runs
    rows = (
        runs.filter(state__in=ACTIVE_STATES)
        .order_by()
        .values("task_name", "state")
        .annotate(count=Count("id"))
        .order_by("task_name", "state")
    )
    return [{"task_name": r["task_name"], "state": r["state"], "count": r["count"]} for r in rows]


def dead_letters_list(
    *, letters: QuerySet[DeadLetter] | None = None, task_name: str | None = None, replayed: bool | None = None
) -> QuerySet[DeadLetter]:
    """`letters`: the caller's scope (dead_letters_for(user)); None only for operator-level callers."""
    letters = (DeadLetter.objects.all() if letters is None else letters).select_related("run", "replay_run")
    if task_name:
        letters = letters.filter(task_name=task_name)
    if replayed is not None:
        letters = letters.filter(replayed_at__isnull=not replayed)
    return letters.order_by("-created_at")


def dead_letter_get(*, dead_letter_id: int) -> DeadLetter | None:
    return DeadLetter.objects.select_related("run", "replay_run").filter(id=dead_letter_id).first()


# --- the result backend -------------------------------------------------------------------------


@dataclass
class CeleryState:
    state: str | None
    result: object = None
    date_done: object = None
    error: str = ""

    @property
    def known(self) -> bool:
        # Celery reports PENDING for any id it has never heard of, so PENDING alone proves nothing.
        return self.state not in (None, "PENDING")


def celery_state(*, task_id: str) -> CeleryState:
    """What the result backend knows of a task id; state None when the backend cannot be read."""
    try:
        # One read of the backend (AsyncResult's state, result and date_done each read it again until the task is
        # ready); get_task_meta decodes the result (an exception for failures) as AsyncResult does.
        meta = current_app.backend.get_task_meta(task_id)
        state = meta["status"]
        result = meta.get("result")
        date_done = meta.get("date_done")
        if isinstance(date_done, str):
            date_done = datetime.fromisoformat(date_done)
    except Exception as exc:
        logger.warning("result backend unreadable for %s: %s", task_id, exc)
        return CeleryState(state=None, error=f"result backend unreadable: {exc}")
    if isinstance(result, BaseException):
        result = f"{type(result).__name__}: {result}"
    return CeleryState(state=state, result=result, date_done=date_done)


# --- the workers --------------------------------------------------------------------------------


def workers_ping(*, timeout: float = INSPECT_TIMEOUT) -> list[str]:
    """Names of the workers that answer a ping within the timeout (empty when none is running)."""
    try:
        replies = current_app.control.ping(timeout=timeout) or []
    except Exception as exc:
        raise BrokerUnavailable(f"cannot reach the broker: {exc}") from exc
    return sorted(name for reply in replies for name in reply)


def _inspect(names: list[str], timeout: float):
    # Addressed to the workers that answered the ping, with a reply limit, each call returns as soon
    # as they have all replied instead of waiting out the timeout for workers that might exist.
    return current_app.control.inspect(destination=names, limit=len(names), timeout=timeout)


@dataclass
class WorkerTask:
    worker: str
    kind: str  # active | reserved | scheduled
    task_id: str
    name: str
    args: object = None
    kwargs: object = None
    time_start: float | None = None
    eta: str | None = None
    run_id: str | None = None


# A backlog can hold thousands of queued runs: the answer lists `limit` of them (running first, then the oldest)
# and counts them all per task and state.
ACTIVE_RUNS_DEFAULT_LIMIT = 50
ACTIVE_RUNS_MAX_LIMIT = 500


@dataclass
class ActiveTasks:
    runs: list[TaskRun]
    runs_total: int
    counts: list[dict] = field(default_factory=list)
    limit: int = ACTIVE_RUNS_DEFAULT_LIMIT
    worker_tasks: list[WorkerTask] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    inspect_error: str = ""


def active_tasks(
    *,
    runs: QuerySet[TaskRun] | None = None,
    workers: bool = True,
    timeout: float = INSPECT_TIMEOUT,
    live: bool | None = None,
    limit: int = ACTIVE_RUNS_DEFAULT_LIMIT,
) -> ActiveTasks:
    """The ledger's active runs (of `runs`, the caller's scope: `limit` of them, running first, and their counts
    per task and state), plus, with `workers` (platform admins only:
    hostnames, pids, every account's arguments), what each live worker is executing, holding or has scheduled.

    The workers' part comes from the snapshot each worker writes at every heartbeat (at most ~2 s old); with
    `live` (default: settings.TASKS_ACTIVE_LIVE) it is asked of the workers by broadcast instead (slow).
    """
    limit = max(0, min(limit, ACTIVE_RUNS_MAX_LIMIT))
    counts = active_runs_counts(runs=runs)
    listed = list(active_runs_list(runs=runs)[:limit]) if limit else []
    outcome = ActiveTasks(runs=listed, runs_total=sum(c["count"] for c in counts), counts=counts, limit=limit)
    if not workers:
        return outcome
    if not (settings.TASKS_ACTIVE_LIVE if live is None else live):
        _from_worker_snapshots(outcome)
        _link_runs(outcome.worker_tasks)
        return outcome
    try:
        outcome.workers = workers_ping(timeout=timeout)
        if outcome.workers:
            inspect = _inspect(outcome.workers, timeout)
            for kind, replies in (
                ("active", inspect.active()),
                ("reserved", inspect.reserved()),
                ("scheduled", inspect.scheduled()),
            ):
                outcome.worker_tasks += _worker_tasks(kind, replies or {})
    except BrokerUnavailable as exc:
        outcome.inspect_error = str(exc)
    except Exception as exc:  # a worker replying garbage must not break the ledger view
        logger.warning("inspecting workers failed: %s", exc)
        outcome.inspect_error = f"inspecting workers failed: {exc}"
    _link_runs(outcome.worker_tasks)
    return outcome


def _from_worker_snapshots(outcome: ActiveTasks) -> None:
    from .platform import WORKER_STATE_KEY, redis_client

    try:
        client = redis_client()
        keys = sorted(client.scan_iter(match=WORKER_STATE_KEY + "*", count=500))
        snapshots = [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []
    except Exception as exc:
        outcome.inspect_error = f"cannot read the workers' snapshots: {exc}"
        return
    for snapshot in snapshots:
        name = snapshot["hostname"]
        outcome.workers.append(name)
        for kind in ("active", "reserved", "scheduled"):
            outcome.worker_tasks += _worker_tasks(kind, {name: snapshot.get(kind) or []})


def _worker_tasks(kind: str, replies: dict) -> list[WorkerTask]:
    tasks = []
    for worker, entries in replies.items():
        for entry in entries or []:
            # scheduled() wraps the request: {"eta": ..., "priority": ..., "request": {...}}
            request = entry.get("request", entry) if kind == "scheduled" else entry
            tasks.append(
                WorkerTask(
                    worker=worker,
                    kind=kind,
                    task_id=request.get("id", ""),
                    name=request.get("name") or request.get("type") or "",
                    args=request.get("args"),
                    kwargs=request.get("kwargs"),
                    time_start=request.get("time_start"),
                    eta=entry.get("eta") if kind == "scheduled" else None,
                )
            )
    return tasks


def _link_runs(tasks: list[WorkerTask]) -> None:
    ids = {task.task_id for task in tasks if task.task_id}
    if not ids:
        return
    run_ids = dict(TaskRun.objects.filter(celery_task_id__in=ids).values_list("celery_task_id", "id"))
    for task in tasks:
        run_id = run_ids.get(task.task_id)
        task.run_id = str(run_id) if run_id else None


@dataclass
class WorkerStats:
    name: str
    status: str
    pid: int | None = None
    uptime: int | None = None
    pool: str = ""
    concurrency: int | None = None
    processes: list[int] = field(default_factory=list)
    prefetch_count: int | None = None
    processed: int = 0
    processed_by_task: dict = field(default_factory=dict)
    queues: list[str] = field(default_factory=list)


def workers_stats(*, timeout: float = INSPECT_TIMEOUT) -> list[WorkerStats]:
    """One entry per worker that answers a ping; an empty list when none does. Raises BrokerUnavailable."""
    names = workers_ping(timeout=timeout)
    if not names:
        return []
    inspect = _inspect(names, timeout)
    try:
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
    except Exception as exc:
        raise BrokerUnavailable(f"inspecting workers failed: {exc}") from exc
    result = []
    for name in names:
        info = stats.get(name) or {}
        pool = info.get("pool") or {}
        totals = info.get("total") or {}
        result.append(
            WorkerStats(
                name=name,
                status="online",
                pid=info.get("pid"),
                uptime=info.get("uptime"),
                pool=pool.get("implementation", ""),
                concurrency=pool.get("max-concurrency"),
                processes=list(pool.get("processes") or []),
                prefetch_count=info.get("prefetch_count"),
                processed=sum(totals.values()),
                processed_by_task=dict(totals),
                queues=sorted(q["name"] for q in queues.get(name) or [] if q.get("name")),
            )
        )
    return result


@dataclass
class TaskStatus:
    """A task id as the ledger and the result backend see it; the ledger wins where both speak."""

    task_id: str
    run: TaskRun | None
    celery: CeleryState

    @property
    def known_to(self) -> list[str]:
        return [name for name, known in (("ledger", self.run is not None), ("celery", self.celery.known)) if known]

    @property
    def state(self) -> str:
        return self.run.state if self.run is not None else (self.celery.state or "UNKNOWN")

    @property
    def celery_state(self) -> str | None:
        return self.celery.state

    @property
    def result(self):
        return self.run.result if self.run is not None and self.run.result is not None else self.celery.result

    @property
    def error(self) -> str:
        return (self.run.error if self.run is not None else "") or self.celery.error

    @property
    def date_done(self):
        return self.run.finished_at if self.run is not None and self.run.finished_at else self.celery.date_done

    @property
    def finished(self) -> bool:
        if self.run is not None:
            return not self.run.is_active
        return self.celery.state in ("SUCCESS", "FAILURE", "REVOKED")


def task_status(*, task_id: str, user=None, role: Role = Role.VIEWER) -> TaskStatus | None:
    """None when neither the ledger nor the result backend has heard of the id, or when `user` (None: an
    operator-level caller) may not see its run with `role`. A task the ledger does not know (only Celery
    does) has no account to scope it by: platform admins only."""
    if user is not None:
        run = runs_for(user, role=role).select_related("user").filter(celery_task_id=task_id).first()
        if run is None and (TaskRun.objects.filter(celery_task_id=task_id).exists() or not is_platform_admin(user)):
            return None
    else:
        run = task_run_by_celery_id(celery_task_id=task_id)
    status = TaskStatus(task_id=task_id, run=run, celery=celery_state(task_id=task_id))
    return status if status.known_to else None

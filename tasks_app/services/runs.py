"""Writes on the task ledger: enqueue, cancel, dead-letter, replay, reconcile lost runs."""

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from finops import correlation

from .. import ledger
from ..models import ACTIVE_STATES, DeadLetter, RunState, TaskRun, TriggerKind
from ..platform import is_finops_task, queue_for

logger = logging.getLogger(__name__)

# The seed's six tasks: the ones a user may trigger by name.
SCHEDULED_TASKS = (
    "sync_provider_cost_data",
    "discover_provider_resources",
    "monitor_budget",
    "analyze_optimization_opportunities",
    "detect_cost_anomalies",
    "cleanup_old_data",
)


class UnknownTask(ValueError):
    pass


def _publish(run: TaskRun, *, countdown: float | None = None) -> None:
    current_app.send_task(
        run.task_name,
        args=run.args,
        kwargs=run.kwargs,
        task_id=run.celery_task_id,
        queue=run.queue,
        countdown=countdown,
        headers={"run_id": str(run.id), correlation.TASK_HEADER: run.correlation_id},
    )


def task_enqueue(
    *,
    task_name: str,
    kwargs: dict | None = None,
    triggered_by: str,
    trigger_detail: str = "",
    user=None,
    parent_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    countdown: float | None = None,
    account_id: int | None = None,
) -> TaskRun:
    """Record the run, then publish it once the surrounding transaction has committed (`countdown` s later).

    account_id: the account the run concerns when its kwargs do not name one (e.g. a check of a budget of one
    account), so that account's team sees the run (TaskRun.account)."""
    if not is_finops_task(task_name):
        raise UnknownTask(f"unknown task {task_name!r}")
    run = ledger.record_enqueue(
        task_name=task_name,
        celery_task_id=str(uuid.uuid4()),
        queue=queue_for(task_name),
        args=[],
        kwargs={k: v for k, v in (kwargs or {}).items() if v is not None},
        triggered_by=triggered_by,
        trigger_detail=trigger_detail or (user.get_username() if user is not None else ""),
        user_id=user.pk if user is not None else None,
        parent_id=parent_id,
        correlation_id=correlation_id or correlation.get() or correlation.new_id(),
        account_id=account_id,
    )
    transaction.on_commit(lambda: _publish(run, countdown=countdown))
    return run


@dataclass
class EnqueueOnce:
    run: TaskRun
    created: bool  # False: `run` is the matching run that was already queued or running


def task_enqueue_once(*, task_name: str, kwargs: dict, match: dict, **options) -> EnqueueOnce:
    """Enqueue unless an active (QUEUED, STARTED, RETRY) run of `task_name` has kwargs equal to `match`
    (keys with a None value: absent); then that run is returned instead and nothing is queued.

    A transaction-scoped PostgreSQL advisory lock on (task, match) serialises the check and the insert, so
    concurrent identical requests queue exactly one run, whichever web process they reach.
    """
    wanted = {k: v for k, v in match.items() if v is not None}
    absent = [k for k, v in match.items() if v is None]
    key = hashlib.sha256(f"enqueue-once:{task_name}:{sorted(wanted.items())}:{sorted(absent)}".encode()).digest()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(key[:8], "big", signed=True)])
        # Read after the lock: under READ COMMITTED this statement sees a run committed by the lock's last holder.
        active = TaskRun.objects.filter(task_name=task_name, state__in=ACTIVE_STATES, kwargs__contains=wanted)
        for name in absent:
            active = active.exclude(kwargs__has_key=name)
        existing = active.order_by("enqueued_at").first()
        if existing is not None:
            return EnqueueOnce(existing, created=False)
        return EnqueueOnce(task_enqueue(task_name=task_name, kwargs=kwargs, **options), created=True)


@dataclass
class CancelOutcome:
    run: TaskRun | None
    cancelled: bool
    message: str


def run_cancel(*, celery_task_id: str) -> CancelOutcome:
    """A queued run never starts (the ledger says CANCELLED, the claim refuses it); a running one is terminated."""
    with transaction.atomic():
        run = TaskRun.objects.select_for_update().filter(celery_task_id=celery_task_id).first()
        if run is None:
            # Not ours (or never recorded): revoke anyway so no worker runs it.
            current_app.control.revoke(celery_task_id)
            return CancelOutcome(None, True, "revoked (no ledger entry)")
        if run.state not in ACTIVE_STATES:
            return CancelOutcome(run, False, f"already {run.state.lower()}")
        was_running = run.state == RunState.STARTED
        now = timezone.now()
        run.state = RunState.CANCELLED
        run.finished_at = now
        run.lease_expires_at = None
        run.error = "cancelled while running" if was_running else "cancelled before it started"
        if run.started_at:
            run.duration_ms = int((now - run.started_at).total_seconds() * 1000)
        run.save(update_fields=["state", "finished_at", "lease_expires_at", "error", "duration_ms"])
    current_app.control.revoke(celery_task_id, terminate=was_running, signal="SIGTERM")
    return CancelOutcome(run, True, run.error)


def run_dead_letter(*, run_id: uuid.UUID) -> DeadLetter:
    """Store a finally-failed run as a replayable dead letter and alert the channels that want it."""
    run = TaskRun.objects.get(id=run_id)
    letter, created = DeadLetter.objects.get_or_create(
        run=run,
        defaults={
            "task_name": run.task_name,
            "args": run.args,
            "kwargs": run.kwargs,
            "queue": run.queue,
            "error": run.error or "unknown error",
            "error_type": run.error_type,
            "retries": run.retries,
        },
    )
    if created:
        _alert_failure(run)
    return letter


def _alert_failure(run: TaskRun) -> None:
    try:
        from costs_app.services.notifications import task_failure_notify

        task_failure_notify(
            task_name=run.task_name,
            celery_task_id=run.celery_task_id,
            error=run.error,
            correlation_id=run.correlation_id,
            account_id=run.account_id,
        )
    except Exception:
        logger.exception("could not send the failure alert for %s", run.celery_task_id)


def dead_letter_replay(*, dead_letter_id: int, user=None, triggered_by: str = TriggerKind.REPLAY) -> TaskRun:
    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().get(id=dead_letter_id)
        run = task_enqueue(
            task_name=letter.task_name,
            kwargs=letter.kwargs,
            triggered_by=triggered_by,
            trigger_detail=f"dead letter {letter.id}",
            user=user,
            correlation_id=letter.run.correlation_id or None,
        )
        letter.replayed_at = timezone.now()
        letter.replay_run = run
        letter.save(update_fields=["replayed_at", "replay_run"])
    return run


@dataclass
class ReconcileResult:
    requeued: int = 0
    failed: int = 0

    def as_dict(self) -> dict:
        return {"requeued": self.requeued, "failed": self.failed}


def live_workers(timeout: float = 1.0) -> set[str] | None:
    """Hostnames of workers that answer a ping; None if the broker cannot be asked."""
    try:
        replies = current_app.control.ping(timeout=timeout) or []
    except Exception:
        return None
    return {name for reply in replies for name in reply}


def runs_reconcile(*, now: datetime, workers: set[str] | None = None) -> ReconcileResult:
    """Re-enqueue runs that were accepted but will never finish: the ledger, not the broker, is the truth.

    Lost: STARTED past its lease (hard limit + grace) or on a worker that no longer answers;
    QUEUED for longer than TASK_QUEUED_LEASE (message lost before a worker got it), or waiting
    to retry well past its countdown.
    A run that hit the hard time limit, or was lost too often, fails for good instead.
    """
    result = ReconcileResult()
    grace = timedelta(seconds=settings.TASK_LEASE_GRACE)
    started = TaskRun.objects.filter(state=RunState.STARTED)
    lost = list(started.filter(lease_expires_at__lt=now))
    if workers is not None:
        for run in started.filter(started_at__lt=now - grace).exclude(id__in=[r.id for r in lost]):
            host = run.worker.rpartition("/")[0]
            if host and host not in workers:
                lost.append(run)
    lost += list(
        TaskRun.objects.filter(
            state=RunState.QUEUED, enqueued_at__lt=now - timedelta(seconds=settings.TASK_QUEUED_LEASE)
        )
    )
    lost += list(TaskRun.objects.filter(state=RunState.RETRY, lease_expires_at__lt=now))
    for run in lost:
        outcome = _requeue_or_fail(run, now=now)
        if outcome:
            setattr(result, outcome, getattr(result, outcome) + 1)
    return result


def _requeue_or_fail(run: TaskRun, *, now: datetime) -> str | None:
    """ "requeued" or "failed"; None when another reconciler or a worker changed the run first."""
    timed_out = current_app.AsyncResult(run.celery_task_id).state == "FAILURE"
    if timed_out or run.redeliveries >= settings.TASK_MAX_RETRIES:
        why = "exceeded the hard time limit" if timed_out else f"lost {run.redeliveries + 1} times"
        updated = TaskRun.objects.filter(id=run.id, state=run.state).update(
            state=RunState.FAILURE, finished_at=now, lease_expires_at=None, error=f"{why}; given up", error_type="Lost"
        )
        if not updated:
            return None
        run_dead_letter(run_id=run.id)
        return "failed"
    with transaction.atomic():
        updated = TaskRun.objects.filter(id=run.id, state=run.state, worker=run.worker).update(
            state=RunState.QUEUED, redeliveries=run.redeliveries + 1, lease_expires_at=None, enqueued_at=now
        )
        if updated:
            run.refresh_from_db()
            logger.warning("re-enqueuing lost run %s of %s", run.celery_task_id, run.task_name)
            transaction.on_commit(lambda: _publish(run))
    return "requeued" if updated else None

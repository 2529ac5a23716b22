"""Writes on the task ledger: enqueue, cancel, dead-letter, replay, reconcile lost runs."""

import hashlib
import json
import logging
import math
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
        reason = "cancelled while running" if was_running else "cancelled before it started"
        # A run waiting to retry already failed once: its error says why and is kept, the cancel noted after it.
        run.error = f"{run.error} ({reason})" if run.error else reason
        if run.started_at:
            run.duration_ms = int((now - run.started_at).total_seconds() * 1000)
        run.save(update_fields=["state", "finished_at", "lease_expires_at", "error", "duration_ms"])
    current_app.control.revoke(celery_task_id, terminate=was_running, signal="SIGTERM")
    return CancelOutcome(run, True, reason)


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


ALERT_WINDOW_KEY = "finops:alerts:window:{task}"
ALERT_SUPPRESSED_KEY = "finops:alerts:suppressed:{task}"


def _alert_failure(run: TaskRun) -> None:
    """The first failure of a task alerts at once; the next ones within TASK_FAILURE_ALERT_WINDOW s are only
    counted, and failure_alerts_flush() sends one alert with the count when the window is over: a storm of a
    hundred failures sends two messages, not a hundred. Without Redis, or with a window of 0, every failure
    alerts (never silence)."""
    from ..platform import redis_client

    window = settings.TASK_FAILURE_ALERT_WINDOW
    try:
        client = redis_client()
        if window > 0 and not client.set(
            ALERT_WINDOW_KEY.format(task=run.task_name), run.celery_task_id, nx=True, ex=window
        ):
            client.incr(ALERT_SUPPRESSED_KEY.format(task=run.task_name))
            logger.warning("failure alert for %s held back (storm): counted for the summary", run.celery_task_id)
            return
    except Exception as exc:
        logger.warning("failure alert rate limit unavailable (%s): alerting", exc)
    _send_failure_alert(
        task_name=run.task_name,
        celery_task_id=run.celery_task_id,
        error=run.error,
        correlation_id=run.correlation_id,
        account_id=run.account_id,
    )


def failure_alerts_flush() -> int:
    """One alert per task whose alert window is over and that failed again meanwhile, with the count."""
    from ..platform import redis_client

    client = redis_client()
    sent = 0
    for key in client.scan_iter(match=ALERT_SUPPRESSED_KEY.format(task="*")):
        task = key.decode().rpartition(":")[2]
        if client.exists(ALERT_WINDOW_KEY.format(task=task)):
            continue
        count = int(client.getdel(key) or 0)
        if count:
            window = settings.TASK_FAILURE_ALERT_WINDOW
            _send_failure_alert(
                task_name=task,
                celery_task_id=f"({count} runs)",
                error=f"{count} more runs of {task} failed within {window} s of the alerted one (alerts are "
                "rate-limited during a failure storm); `manage.py monitor_tasks failed` lists them",
                correlation_id="",
            )
            sent += 1
    return sent


def _send_failure_alert(
    *, task_name: str, celery_task_id: str, error: str, correlation_id: str, account_id: int | None = None
) -> None:
    """To the organisation-wide channels and those of the account's team (a storm's summary: org-wide only)."""
    try:
        from costs_app.services.notifications import task_failure_notify

        task_failure_notify(
            task_name=task_name,
            celery_task_id=celery_task_id,
            error=error,
            correlation_id=correlation_id,
            account_id=account_id,
        )
    except Exception:
        logger.exception("could not send the failure alert for %s", celery_task_id)


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
    recorded: int = 0
    republished: int = 0

    def as_dict(self) -> dict:
        return {
            "requeued": self.requeued,
            "failed": self.failed,
            "recorded": self.recorded,
            "republished": self.republished,
        }


def live_workers(timeout: float = 1.0) -> set[str] | None:
    """Hostnames of workers that answer a ping; None if the broker cannot be asked."""
    try:
        replies = current_app.control.ping(timeout=timeout) or []
    except Exception:
        return None
    return {name for reply in replies for name in reply}


# A key that exists as long as the broker keeps its data: gone means Redis restarted empty (or was flushed),
# and every message it held is lost. Its value names the Redis instance (INFO run_id) and when it was set.
BROKER_SENTINEL_KEY = "finops:broker:sentinel"


def broker_identity() -> dict:
    """The broker's Redis as it is now: its run_id (new at every start) and whether our sentinel survived."""
    from ..platform import redis_client

    client = redis_client()
    info = client.info("server")
    raw = client.get(BROKER_SENTINEL_KEY)
    return {
        "run_id": info.get("run_id"),
        "uptime_s": info.get("uptime_in_seconds"),
        "sentinel": json.loads(raw) if raw else None,
    }


def broker_loss_recover(*, now: datetime) -> int | None:
    """If the broker lost its data, publish every QUEUED and RETRY run again at once; None if it did not.

    Duplicates are harmless: the ledger claim runs each run once and drops the extra delivery. The sentinel
    is written first, so a broker lost again during the republishing is detected again.
    """
    from ..platform import redis_client

    identity = broker_identity()
    if identity["sentinel"] is not None:
        return None
    redis_client().set(BROKER_SENTINEL_KEY, json.dumps({"run_id": identity["run_id"], "set_at": now.isoformat()}))
    republished = 0
    for run in TaskRun.objects.filter(state__in=(RunState.QUEUED, RunState.RETRY)).order_by("enqueued_at"):
        countdown = None
        if run.state == RunState.RETRY:
            due = ledger.retry_due_at(run)
            countdown = max((due - now).total_seconds(), 0.0) if due else None
        _publish(run, countdown=countdown or None)
        republished += 1
    logger.warning(
        "broker %s has lost its data (restarted empty?): republished %d queued and retrying runs",
        identity["run_id"],
        republished,
    )
    return republished


def stranded_runs_republish(*, now: datetime) -> int:
    """Publish again the runs whose message a worker took but never started: the worker died holding it.

    A worker reserves messages ahead (prefetch) and holds retries until their countdown ends; killed, it
    takes them along: the broker keeps them as unacknowledged until its visibility timeout (an hour), and
    the ledger would wait for the queued lease (hours). The broker's unacked index says since when each
    was delivered: one delivered over TASK_UNACKED_GRACE s ago (countdown over) whose run is still QUEUED
    or RETRY is published again. A live worker that merely had it waiting in its prefetch is outrun by
    the copy, and the ledger claim drops whichever delivery comes second.
    """
    from ..platform import redis_client

    cutoff = now.timestamp() - settings.TASK_UNACKED_GRACE
    delivered: dict[str, float] = {}
    for headers, score in _unacked(redis_client(), delivered_before=cutoff, limit=1000):
        eta = headers.get("eta")
        if eta and datetime.fromisoformat(eta).timestamp() > cutoff:
            continue  # a countdown still running (or just over): the worker holds it on purpose
        delivered[headers.get("id")] = score
    if not delivered:
        return 0
    republished = 0
    waiting = TaskRun.objects.filter(celery_task_id__in=list(delivered), state__in=(RunState.QUEUED, RunState.RETRY))
    for run in waiting:
        if run.enqueued_at.timestamp() > delivered[run.celery_task_id]:
            continue  # published again since that delivery
        if run.state == RunState.RETRY:
            due = ledger.retry_due_at(run)
            if due is not None and due.timestamp() > cutoff:
                continue
        updated = TaskRun.objects.filter(id=run.id, state=run.state, enqueued_at=run.enqueued_at).update(
            state=RunState.QUEUED, enqueued_at=now, lease_expires_at=None
        )
        if updated:
            logger.warning(
                "re-publishing %s of %s: taken by a worker that never started it", run.celery_task_id, run.task_name
            )
            _publish(run)
            republished += 1
    return republished


# Past this many messages in one queue the broker is not scanned for missing runs (the queued lease remains).
UNPUBLISHED_SCAN_LIMIT = 10_000


def unpublished_runs_republish(*, now: datetime) -> int:
    """Publish again the QUEUED runs whose message is nowhere: not waiting in its queue, not held by a worker.

    It happens when a process dies between writing the run and publishing it (a reconciler's requeue, an
    enqueue), or a worker dies between taking a message and recording it as unacknowledged. Runs queued
    for TASK_UNACKED_GRACE s are looked up in the broker; the ledger claim drops a duplicate should a message
    have been in flight meanwhile. An unacknowledged copy delivered before the run was last queued is an
    earlier delivery's (a dead worker's, kept until the visibility timeout), not the message the run waits
    for: the worker-kill drill once saw a requeued run's new message lost in a killed worker's hands while
    the old copy, still in `unacked`, made it look present, and the run stayed QUEUED.
    """
    from ..platform import redis_client

    cutoff = now - timedelta(seconds=settings.TASK_UNACKED_GRACE)
    candidates = list(
        TaskRun.objects.filter(state=RunState.QUEUED, enqueued_at__lt=cutoff).order_by("enqueued_at")[:1000]
    )
    if not candidates:
        return 0
    client = redis_client()
    # task id -> when its latest copy reached a worker, or +inf while one waits in its queue
    present: dict[str, float] = {}
    for headers, delivered in _unacked(client):
        present[headers.get("id")] = max(present.get(headers.get("id"), 0.0), delivered)
    for queue in {run.queue for run in candidates}:
        if client.llen(queue) > UNPUBLISHED_SCAN_LIMIT:
            return 0
        for raw in client.lrange(queue, 0, -1):
            try:
                present[json.loads(raw)["headers"]["id"]] = math.inf
            except (TypeError, ValueError, KeyError):
                continue
    republished = 0
    for run in candidates:
        if present.get(run.celery_task_id, -1.0) >= run.enqueued_at.timestamp():
            continue
        updated = TaskRun.objects.filter(id=run.id, state=RunState.QUEUED, enqueued_at=run.enqueued_at).update(
            enqueued_at=now, redeliveries=run.redeliveries + 1
        )
        if updated:
            logger.warning(
                "re-publishing %s of %s: its message is not in the broker", run.celery_task_id, run.task_name
            )
            _publish(run)
            republished += 1
    return republished


def _unacked(client, *, delivered_before: float | str = "+inf", limit: int | None = None) -> list[tuple[dict, float]]:
    """The messages workers took and have not acknowledged, oldest first: (headers, when delivered).

    kombu's Redis transport keeps each as [message, exchange, routing key] in the `unacked` hash under its
    delivery tag, and the time it was delivered in the `unacked_index` sorted set.
    """
    page = {"start": 0, "num": limit} if limit else {}
    tags = client.zrangebyscore("unacked_index", "-inf", delivered_before, withscores=True, **page)
    if not tags:
        return []
    copies = []
    for (_tag, delivered), raw in zip(tags, client.hmget("unacked", [tag for tag, _ in tags]), strict=True):
        try:
            copies.append((json.loads(raw)[0]["headers"], delivered))
        except (TypeError, ValueError, KeyError, IndexError):  # acknowledged meanwhile, or not kombu's
            continue
    return copies


def runs_reconcile(*, now: datetime, workers: set[str] | None = None) -> ReconcileResult:
    """Resolve runs that were accepted but will never finish: the ledger, not the broker, is the truth.

    First, a broker that lost its data gets every QUEUED/RETRY run again at once (broker_loss_recover), and
    runs whose message a dead worker took along, or that no message carries, are published again
    (stranded_runs_republish, unpublished_runs_republish).
    Lost: STARTED whose claim is no longer renewed (lease past: its executor died, froze or lost the
    database), QUEUED for longer than TASK_QUEUED_LEASE (message lost in a way we could not detect), or
    waiting to retry well past its countdown. Whether the worker answers pings is not a criterion: a frozen
    main process can have a child still working (and renewing), and a restarted one answers although its
    runs are gone; `workers` is accepted for compatibility and ignored.
    A lost run whose outcome the result backend holds is recorded from there; one that hit the hard time
    limit, or was lost too often, fails for good; the others are published again.
    """
    result = ReconcileResult()
    try:
        result.republished = broker_loss_recover(now=now) or 0
        result.republished += stranded_runs_republish(now=now)
        result.republished += unpublished_runs_republish(now=now)
    except Exception as exc:  # broker unreachable: the leases below still resolve what they can
        logger.warning("cannot check the broker for lost data: %s", exc)
    try:
        failure_alerts_flush()
    except Exception as exc:
        logger.warning("cannot flush the held-back failure alerts: %s", exc)
    lost = list(TaskRun.objects.filter(state=RunState.STARTED, lease_expires_at__lt=now))
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


def _backend_outcome(run: TaskRun) -> tuple[str, object]:
    """What the result backend says of a lost STARTED run: ("SUCCESS", result), ("TIME_LIMIT", None), or ("", None)."""
    if run.state != RunState.STARTED:
        return "", None
    try:
        async_result = current_app.AsyncResult(run.celery_task_id)
        state = async_result.state
        if state == "SUCCESS":
            value = async_result.result
            if isinstance(value, dict) and value.get("skipped"):
                return "", None  # a dropped duplicate delivery wrote that, not the run's own execution
            return "SUCCESS", value
        if state == "FAILURE" and type(async_result.result).__name__ == "TimeLimitExceeded":
            return "TIME_LIMIT", None
    except Exception as exc:  # backend unreachable: decide on the ledger alone
        logger.warning("result backend not readable for %s: %s", run.celery_task_id, exc)
    return "", None


def _requeue_or_fail(run: TaskRun, *, now: datetime) -> str | None:
    """ "requeued", "failed" or "recorded"; None when another reconciler or a worker changed the run first."""
    backend, value = _backend_outcome(run)
    if backend == "SUCCESS":
        # The work completed but its worker could not record it (the database was away): record it now.
        updated = TaskRun.objects.filter(id=run.id, state=run.state, started_at=run.started_at).update(
            state=RunState.SUCCESS, finished_at=now, lease_expires_at=None, result=value
        )
        return "recorded" if updated else None
    if backend == "TIME_LIMIT" or run.redeliveries >= settings.TASK_MAX_RETRIES:
        why = "exceeded the hard time limit" if backend == "TIME_LIMIT" else f"lost {run.redeliveries + 1} times"
        updated = TaskRun.objects.filter(id=run.id, state=run.state).update(
            state=RunState.FAILURE, finished_at=now, lease_expires_at=None, error=f"{why}; given up", error_type="Lost"
        )
        if not updated:
            return None
        run_dead_letter(run_id=run.id)
        return "failed"
    with transaction.atomic():
        # started_at is the claim: a run claimed again since it was read is left to its new executor.
        updated = TaskRun.objects.filter(
            id=run.id, state=run.state, worker=run.worker, started_at=run.started_at
        ).update(state=RunState.QUEUED, redeliveries=run.redeliveries + 1, lease_expires_at=None, enqueued_at=now)
        if updated:
            run.refresh_from_db()
            logger.warning("re-enqueuing lost run %s of %s", run.celery_task_id, run.task_name)
            transaction.on_commit(lambda: _publish(run))
    return "requeued" if updated else None

"""The TaskRun ledger's hot path: one statement to record an enqueue, a claim, a finish.

These run for every task execution, so they are single SQL statements (no ORM round trips),
and the claim is the guard that makes delivery at-least-once but execution once: a message
whose run is already finished, cancelled or held by a live worker is dropped.
"""

import json
import os
import socket
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from .models import RunState, TaskRun, TriggerKind

HOSTNAME = socket.gethostname()

_CLAIM_SQL = """
INSERT INTO tasks_app_taskrun AS r (
    id, task_name, celery_task_id, queue, args, kwargs, triggered_by, trigger_detail, correlation_id,
    state, enqueued_at, started_at, worker, retries, redeliveries, lease_expires_at, error, error_type,
    error_traceback, account_id
)
SELECT %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, 'STARTED', %s::timestamptz, %s::timestamptz, %s, %s, 0,
       %s::timestamptz, '', '', '', (SELECT id FROM providers_app_cloudaccount WHERE id = %s)
-- Asynchronous commit for this statement's own transaction only (see claim()); in the statement, not a
-- separate SET LOCAL, so the claim stays one round trip.
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
ON CONFLICT (celery_task_id) DO UPDATE SET
    state = 'STARTED', started_at = EXCLUDED.started_at, worker = EXCLUDED.worker,
    retries = GREATEST(r.retries, EXCLUDED.retries), lease_expires_at = EXCLUDED.lease_expires_at,
    finished_at = NULL
WHERE r.state IN ('QUEUED', 'RETRY') OR (r.state = 'STARTED' AND r.lease_expires_at < EXCLUDED.started_at)
RETURNING r.id
"""

_ENQUEUE_SQL = """
INSERT INTO tasks_app_taskrun (
    id, task_name, celery_task_id, queue, args, kwargs, triggered_by, trigger_detail, user_id, parent_id,
    correlation_id, state, enqueued_at, worker, retries, redeliveries, error, error_type, error_traceback, account_id
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'QUEUED', %s, '', 0, 0, '', '', '',
          (SELECT id FROM providers_app_cloudaccount WHERE id = %s))"""


def account_of(kwargs: dict | None) -> int | None:
    """The account a run concerns, for tenancy (TaskRun.account): its kwargs' account_id, when it is one."""
    value = (kwargs or {}).get("account_id")
    # A sub-select turns an id that names no account into NULL rather than a foreign-key error.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def worker_name(hostname: str | None = None) -> str:
    return f"{hostname or HOSTNAME}/{os.getpid()}"


def lease_end(now: datetime) -> datetime:
    """A claim lives TASK_CLAIM_LEASE s unless its executing process renews it (platform.ClaimKeeper).

    Short, so a dead or frozen executor's run is handed over within a heartbeat or two, never after
    the hard time limit; a live one renews it every TASK_CLAIM_RENEW s however long it runs.
    """
    return now + timedelta(seconds=settings.TASK_CLAIM_LEASE)


def claim(
    *,
    celery_task_id: str,
    task_name: str,
    queue: str,
    args: list,
    kwargs: dict,
    correlation_id: str,
    retries: int,
    hostname: str | None,
    now: datetime,
) -> uuid.UUID | None:
    """Mark the run STARTED if it may start; None means: do not execute this delivery."""
    params = [
        uuid.uuid4(),
        task_name,
        celery_task_id,
        queue,
        json.dumps(args),
        json.dumps(kwargs),
        TriggerKind.OTHER,
        "",
        correlation_id or "",
        now,
        now,
        worker_name(hostname),
        retries,
        lease_end(now),
        account_of(kwargs),
    ]
    # The claim's commit does not wait for its WAL flush (_CLAIM_SQL sets synchronous_commit off for its
    # own transaction; ~10% end to end in bench/tasks.py). Nothing is given up: exclusion between
    # deliveries rests on the row lock and the committed row, which other sessions see at once; WAL is
    # one ordered stream, so the next synchronous commit (the finish, or anything durable the task
    # writes) makes the claim durable too. A claim lost in a PostgreSQL crash leaves the run QUEUED and
    # the reconciler re-runs it: the same outcome as for a durable claim whose task died with the database.
    # A worker calls this in autocommit, so the setting covers the claim's own transaction and nothing else.
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, params)
        row = cursor.fetchone()
    if row:
        return row[0]
    return _reclaim_from_dead_local_process(celery_task_id=celery_task_id, hostname=hostname, now=now)


def _reclaim_from_dead_local_process(*, celery_task_id: str, hostname: str | None, now: datetime) -> uuid.UUID | None:
    """A run held by a process of this host that no longer exists (killed child) may be taken over now."""
    holder = TaskRun.objects.filter(celery_task_id=celery_task_id, state=RunState.STARTED).values_list(
        "worker", flat=True
    )
    holder = next(iter(holder), None)
    if not holder or "/" not in holder:
        return None
    host, _, pid = holder.rpartition("/")
    if host != (hostname or HOSTNAME) or not pid.isdigit() or _pid_alive(int(pid)):
        return None
    updated = TaskRun.objects.filter(celery_task_id=celery_task_id, state=RunState.STARTED, worker=holder).update(
        started_at=now, worker=worker_name(hostname), lease_expires_at=lease_end(now), redeliveries=_plus_one()
    )
    if not updated:
        return None
    return TaskRun.objects.only("id").get(celery_task_id=celery_task_id).id


def _plus_one():
    from django.db.models import F

    return F("redeliveries") + 1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# "This claim is still ours": STARTED with our started_at; or our claim never became durable (it commits
# asynchronously, see claim(), and PostgreSQL crashed right after) — the row is as it was before our claim:
# still QUEUED/RETRY, neither claimed nor re-enqueued by the reconciler since (both would be newer than us).
_OURS = (
    "((state = 'STARTED' AND started_at = %(claimed_at)s) OR (state IN ('QUEUED', 'RETRY')"
    " AND enqueued_at < %(claimed_at)s AND (started_at IS NULL OR started_at < %(claimed_at)s)))"
)


def finish(
    *,
    run_id: uuid.UUID,
    state: str,
    now: datetime,
    result=None,
    error: str = "",
    error_type: str = "",
    error_traceback: str = "",
    claimed_at: datetime | None = None,
) -> bool:
    """False when the run was no longer STARTED (cancelled, or taken over meanwhile): nothing was recorded.

    claimed_at is the fencing token: the started_at its claim wrote. A claim that expired and was taken
    over by another delivery has a newer started_at, so the late result of the old one is refused.
    """
    params = {
        "state": state,
        "now": now,
        "result": json.dumps(result) if result is not None else None,
        "error": error,
        "error_type": error_type,
        "error_traceback": error_traceback,
        "id": run_id,
        "claimed_at": claimed_at,
    }
    mine = _OURS if claimed_at is not None else "state = 'STARTED'"
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE tasks_app_taskrun SET state = %(state)s, finished_at = %(now)s, result = %(result)s,"
            " error = %(error)s, error_type = %(error_type)s, error_traceback = %(error_traceback)s,"
            " lease_expires_at = NULL,"
            " started_at = COALESCE(%(claimed_at)s, started_at),"
            " duration_ms = (EXTRACT(EPOCH FROM (%(now)s - COALESCE(%(claimed_at)s, started_at))) * 1000)::integer"
            " WHERE id = %(id)s AND " + mine,
            params,
        )
        return cursor.rowcount == 1


def renew(*, run_id: uuid.UUID, claimed_at: datetime, now: datetime, worker: str = "") -> bool:
    """Extend a live claim's lease; False when the claim is no longer this one's (finished, requeued, taken over).

    A claim lost in a PostgreSQL crash (see _OURS) is written again here.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE tasks_app_taskrun SET lease_expires_at = %(lease)s, state = 'STARTED', started_at = %(claimed_at)s,"
            " worker = CASE WHEN state = 'STARTED' THEN worker ELSE %(worker)s END, finished_at = NULL"
            " WHERE id = %(id)s AND " + _OURS,
            {"lease": lease_end(now), "claimed_at": claimed_at, "id": run_id, "worker": worker},
        )
        return cursor.rowcount == 1


def claim_alive(*, run_id: str, claimed_at: datetime | None, now: datetime) -> bool:
    """Is this claim (run + its started_at) still STARTED with a lease that has not run out?"""
    runs = TaskRun.objects.filter(id=run_id, state=RunState.STARTED, lease_expires_at__gt=now)
    if claimed_at is not None:
        runs = runs.filter(started_at=claimed_at)
    return runs.exists()


def mark_retry(
    *,
    run_id: uuid.UUID,
    retries: int,
    error: str,
    error_type: str,
    countdown: float,
    claimed_at: datetime | None = None,
) -> bool:
    """The lease covers the countdown plus the queued lease: past it, the reconciler treats the retry as lost
    (and retry_due_at() recovers the due time from it, for a broker that lost the message)."""
    now = timezone.now()
    runs = TaskRun.objects.filter(id=run_id, state=RunState.STARTED)
    if claimed_at is not None:
        lost_claim = Q(state__in=(RunState.QUEUED, RunState.RETRY), enqueued_at__lt=claimed_at) & (
            Q(started_at__isnull=True) | Q(started_at__lt=claimed_at)
        )
        runs = TaskRun.objects.filter(Q(id=run_id) & (Q(state=RunState.STARTED, started_at=claimed_at) | lost_claim))
    return bool(
        runs.update(
            state=RunState.RETRY,
            retries=retries,
            error=error,
            error_type=error_type,
            lease_expires_at=now + timedelta(seconds=countdown + settings.TASK_QUEUED_LEASE),
        )
    )


def retry_due_at(run: TaskRun) -> datetime | None:
    """When a RETRY run's countdown ends (mark_retry set the lease to that plus the queued lease)."""
    if run.lease_expires_at is None:
        return None
    return run.lease_expires_at - timedelta(seconds=settings.TASK_QUEUED_LEASE)


def record_enqueue(
    *,
    task_name: str,
    celery_task_id: str,
    queue: str,
    args: list,
    kwargs: dict,
    triggered_by: str,
    trigger_detail: str = "",
    user_id: int | None = None,
    parent_id: uuid.UUID | None = None,
    correlation_id: str = "",
    if_absent: bool = False,
    account_id: int | None = None,
) -> TaskRun:
    """Write the QUEUED row; with if_absent, a row already there for this Celery id wins (ON CONFLICT DO NOTHING)."""
    run = TaskRun(
        task_name=task_name,
        celery_task_id=celery_task_id,
        queue=queue,
        args=list(args or []),
        kwargs=dict(kwargs or {}),
        triggered_by=triggered_by,
        trigger_detail=trigger_detail[:255],
        user_id=user_id,
        parent_id=parent_id,
        correlation_id=correlation_id or "",
        state=RunState.QUEUED,
        enqueued_at=timezone.now(),
    )
    # The account the run concerns (tenancy): its kwargs' account_id, or the caller's when the kwargs name none.
    account_id = account_of(run.kwargs) or account_id
    # One plain INSERT instead of Model.save(): this runs for every enqueue, and the ORM's save
    # machinery cost as much client CPU as the statement itself (bench/tasks.py).
    with connection.cursor() as cursor:
        cursor.execute(
            _ENQUEUE_SQL + (" ON CONFLICT (celery_task_id) DO NOTHING" if if_absent else "") + " RETURNING account_id",
            [
                run.id,
                run.task_name,
                run.celery_task_id,
                run.queue,
                json.dumps(run.args),
                json.dumps(run.kwargs),
                run.triggered_by,
                run.trigger_detail,
                run.user_id,
                run.parent_id,
                run.correlation_id,
                run.enqueued_at,
                account_id,
            ],
        )
        row = cursor.fetchone()
    # The sub-select may have found no such account: the caller's copy holds what the row holds.
    run.account_id = row[0] if row else None
    run._state.adding = False
    run._state.db = connection.alias
    return run


def record_enqueue_if_absent(**fields) -> None:
    """For publishes that did not go through task_enqueue (beat, a child's .delay()): one INSERT, no clash."""
    record_enqueue(**fields, if_absent=True)

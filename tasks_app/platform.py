"""The behaviour every FinOps task shares, written once: ledger, correlation id, lock, retry, dead letters.

Tasks themselves stay thin (see tasks_app/tasks.py); they subclass nothing and declare
`base=FinOpsTask`. The pieces:

- before_task_publish: every publish of a FinOps task carries a correlation id and a ledger row
  (beat schedules and child tasks included); task_enqueue() writes the row itself, after commit.
- FinOpsTask.__call__: claims the run in the ledger (or drops a duplicate delivery), holds the
  per-account lock, runs, and records the outcome; transient errors are retried with the
  configured backoff, everything else fails at once; a final failure goes to the dead letters.
"""

import logging
import traceback
from contextlib import contextmanager

import redis
from celery import Task, signals
from celery.exceptions import Retry, SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from finops import correlation
from finops.errors import PermanentError, TransientError

from . import ledger
from .models import RunState, TriggerKind

logger = logging.getLogger(__name__)

_in_beat = False
_redis_client: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5, socket_connect_timeout=5)
    return _redis_client


def is_finops_task(name: str | None) -> bool:
    """Only FinOps tasks get ledger rows; a plain Celery task is left alone."""
    from celery import current_app

    return isinstance(current_app.tasks.get(name), FinOpsTask)


def queue_for(task_name: str) -> str:
    return settings.CELERY_TASK_ROUTES.get(task_name, {}).get("queue", settings.CELERY_TASK_DEFAULT_QUEUE)


@contextmanager
def account_lock(key: str | None, timeout: int):
    """Redis lock so two runs for the same account never overlap; contention is a transient error."""
    if key is None:
        yield
        return
    lock = redis_client().lock(f"finops:lock:{key}", timeout=timeout, blocking=False)
    try:
        acquired = lock.acquire(blocking=False)
    except redis.RedisError as exc:
        raise TransientError(f"cannot reach Redis for lock {key}: {exc}") from exc
    if not acquired:
        raise TransientError(f"another run holds the lock {key}")
    try:
        yield
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("lock %s expired before release", key)


class FinOpsTask(Task):
    """Base class of the six tasks and the platform's own tasks."""

    # Celery's own autoretry is not used: the policy below reads its backoff from settings at run time.
    max_retries = None
    acks_late = True
    reject_on_worker_lost = True
    typing = True
    # kwargs key whose value scopes the lock, e.g. "account_id"; None means no lock.
    lock_on: str | None = None

    def lock_key(self, kwargs: dict) -> str | None:
        if self.lock_on and kwargs.get(self.lock_on) is not None:
            return f"{self.name}:{self.lock_on}:{kwargs[self.lock_on]}"
        return None

    def __call__(self, *args, **kwargs):
        request = self.request
        if request.called_directly or request.is_eager:
            return self.run(*args, **kwargs)

        corr = correlation.clean(_header(request, correlation.TASK_HEADER)) or correlation.new_id()
        token = correlation.correlation_id.set(corr)
        close_old_connections()
        try:
            now = timezone.now()
            run_id = ledger.claim(
                celery_task_id=request.id,
                task_name=self.name,
                queue=(request.delivery_info or {}).get("routing_key") or queue_for(self.name),
                args=list(args),
                kwargs=kwargs,
                correlation_id=corr,
                retries=request.retries,
                hostname=request.hostname,
                now=now,
            )
            if run_id is None:
                logger.info(
                    "dropping delivery of %s %s: run already finished, cancelled or held", self.name, request.id
                )
                return {"skipped": "duplicate delivery"}
            request.run_id = str(run_id)
            return self._execute(run_id, args, kwargs)
        finally:
            correlation.correlation_id.reset(token)

    def _execute(self, run_id, args, kwargs):
        request = self.request
        try:
            with account_lock(self.lock_key(kwargs), timeout=settings.CELERY_TASK_TIME_LIMIT + 60):
                result = self.run(*args, **kwargs)
        except TransientError as exc:
            if request.retries < settings.TASK_MAX_RETRIES:
                countdown = settings.TASK_RETRY_BACKOFF_BASE * (2**request.retries)
                ledger.mark_retry(
                    run_id=run_id,
                    retries=request.retries + 1,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    countdown=countdown,
                )
                logger.warning(
                    "%s: transient error, retry %d in %ss: %s", self.name, request.retries + 1, countdown, exc
                )
                raise self.retry(
                    exc=exc,
                    countdown=countdown,
                    max_retries=settings.TASK_MAX_RETRIES,
                    headers={correlation.TASK_HEADER: correlation.get(), "run_id": str(run_id)},
                )
            self._fail(run_id, exc, f"gave up after {request.retries} retries: {exc}")
            raise
        except Retry:
            raise
        except SoftTimeLimitExceeded as exc:
            limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
            self._fail(run_id, exc, f"stopped at the soft time limit of {limit} s; work done so far was rolled back")
            raise
        except PermanentError as exc:
            self._fail(run_id, exc, str(exc))
            raise
        except Exception as exc:
            # The message for users, the traceback apart (platform admins and the logs only).
            self._fail(run_id, exc, f"{type(exc).__name__}: {exc}", tb=traceback.format_exc(limit=8))
            raise
        ledger.finish(run_id=run_id, state=RunState.SUCCESS, now=timezone.now(), result=result)
        return result

    def _fail(self, run_id, exc: BaseException, message: str, tb: str = "") -> None:
        from .services.runs import run_dead_letter

        logger.error("%s failed: %s", self.name, message.splitlines()[0] if message else type(exc).__name__)
        if tb:
            logger.error("%s traceback (run %s):\n%s", self.name, run_id, tb)
        try:
            failed = ledger.finish(
                run_id=run_id,
                state=RunState.FAILURE,
                now=timezone.now(),
                error=message,
                error_type=type(exc).__name__,
                error_traceback=tb,
            )
            # A run cancelled meanwhile stays cancelled: no dead letter to replay, no failure alert.
            if failed:
                run_dead_letter(run_id=run_id)
        except Exception:  # the ledger must not hide the task's own error
            logger.exception("could not record the failure of run %s", run_id)


def _header(request, key: str):
    value = getattr(request, key, None)
    if value is None and isinstance(request.headers, dict):
        value = request.headers.get(key)
    return value


@signals.beat_init.connect
def _mark_beat(**_):
    global _in_beat
    _in_beat = True


@signals.before_task_publish.connect
def _on_publish(sender=None, headers=None, body=None, routing_key=None, **_):
    """Every FinOps task message carries a correlation id and has a ledger row before it is sent."""
    if headers is None or not is_finops_task(sender):
        return
    if not headers.get(correlation.TASK_HEADER):
        headers[correlation.TASK_HEADER] = correlation.get() or correlation.new_id()
    if headers.get("run_id"):
        return  # task_enqueue() or a retry: the row exists
    from celery import current_task

    parent = current_task if current_task and current_task.request.id else None
    if _in_beat:
        triggered_by, detail = TriggerKind.SCHEDULE, headers.get("periodic_task_name") or ""
    elif parent is not None:
        triggered_by, detail = TriggerKind.PARENT, parent.request.id
    else:
        triggered_by, detail = TriggerKind.OTHER, ""
    args, kwargs = (body[0], body[1]) if isinstance(body, (tuple, list)) and len(body) >= 2 else ([], {})
    parent_run = getattr(parent.request, "run_id", None) if parent is not None else None
    try:
        ledger.record_enqueue_if_absent(
            task_name=sender,
            celery_task_id=headers["id"],
            queue=routing_key or queue_for(sender),
            args=args,
            kwargs=kwargs,
            triggered_by=triggered_by,
            trigger_detail=detail,
            parent_id=parent_run,
            correlation_id=headers[correlation.TASK_HEADER],
        )
    except Exception:  # the worker's claim creates the row if this could not
        logger.exception("could not record the enqueue of %s %s", sender, headers.get("id"))

"""The behaviour every FinOps task shares, written once: ledger, correlation id, lock, retry, dead letters.

Tasks themselves stay thin (see tasks_app/tasks.py); they subclass nothing and declare
`base=FinOpsTask`. The pieces:

- before_task_publish: every publish of a FinOps task carries a correlation id and a ledger row
  (beat schedules and child tasks included); task_enqueue() writes the row itself, after commit.
- FinOpsTask.__call__: claims the run in the ledger (or drops a duplicate delivery), holds the
  per-account lock, runs, and records the outcome; transient errors are retried with the
  configured backoff, everything else fails at once; a final failure goes to the dead letters.
"""

import contextlib
import json
import logging
import math
import threading
import time
import traceback
import uuid
from datetime import datetime
from typing import NoReturn

import psycopg
import redis
from celery import Task, signals
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded
from django import db as django_db
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from finops import correlation
from finops.errors import PermanentError, TransientError
from finops.redis_url import redis_from_url

from . import ledger
from .models import RunState, TaskRun, TriggerKind

logger = logging.getLogger(__name__)

_in_beat = False
_redis_client: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = redis_from_url(settings.CELERY_BROKER_URL, socket_timeout=5, socket_connect_timeout=5)
    return _redis_client


def is_finops_task(name: str | None) -> bool:
    """Only FinOps tasks get ledger rows; a plain Celery task is left alone."""
    from celery import current_app

    return isinstance(current_app.tasks.get(name), FinOpsTask)


def queue_for(task_name: str) -> str:
    return settings.CELERY_TASK_ROUTES.get(task_name, {}).get("queue", settings.CELERY_TASK_DEFAULT_QUEUE)


# Errors of the infrastructure under a task: the database or the broker went away or timed out. Like a
# TransientError they are retried (the work rolled back with its transaction), never a final failure at once.
DB_ERRORS = (django_db.OperationalError, django_db.InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
INFRA_ERRORS: tuple[type[BaseException], ...] = (
    django_db.OperationalError,
    django_db.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
)


class LockHeld(TransientError):
    """The run's lock is held by a live holder: the run waits for it (TASK_LOCK_WAIT s in all), retrying without
    spending TASK_MAX_RETRIES, which are for errors."""


# The longest countdown between two looks at a held lock (the waits grow like the retry backoff up to this).
LOCK_POLL_MAX = 60.0


class Fenced(Exception):
    """This execution's claim expired and may belong to another delivery now: stop, record nothing."""


def patiently(write, *, what: str):
    """Run a ledger write, retrying while the database is unreachable (up to TASK_LEDGER_PATIENCE s).

    The outcome of work is recorded once PostgreSQL is back rather than lost with the connection; past
    the patience the error propagates and the claim's lease, no longer renewed, lets the reconciler
    resolve the run.
    """
    deadline = time.monotonic() + settings.TASK_LEDGER_PATIENCE
    delay = 0.2
    while True:
        try:
            return write()
        except DB_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise
            logger.warning("ledger write (%s) failed, retrying in %.1f s: %s", what, delay, exc)
            _drop_connection()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _drop_connection() -> None:
    """Give back a connection that failed, so the next statement gets a fresh one (after a server restart)."""
    with contextlib.suppress(Exception):  # closing a dead connection may itself fail; the next use opens anew
        connection.close()


_RENEW_LOCK = """
local current = redis.call('get', KEYS[1])
if current == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
elseif not current then
  return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') and 2 or 0
end
return 0
"""
_TAKE_OVER_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 or 0
end
return 0
"""
_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def lock_value(*, run_id, claimed_at: datetime, worker: str, acquired_at: float) -> str:
    return json.dumps(
        {"run": str(run_id), "claimed_at": claimed_at.isoformat(), "worker": worker, "since": acquired_at},
        sort_keys=True,
    )


def parse_lock_value(raw: bytes | str | None) -> dict | None:
    """The holder recorded in a lock, or None for a value this code did not write."""
    if raw is None:
        return None
    try:
        holder = json.loads(raw)
        holder["claimed_at"] = datetime.fromisoformat(holder["claimed_at"])
        uuid.UUID(holder["run"])
    except (ValueError, TypeError, KeyError):
        return None
    return holder


def lock_holder_alive(holder: dict | None, *, now: datetime) -> bool:
    """A holder is alive while its claim is: its run STARTED by that same delivery, lease not run out.

    A value we cannot read is treated as alive (it lapses with its TTL).
    """
    if holder is None:
        return True
    return ledger.claim_alive(run_id=holder["run"], claimed_at=holder["claimed_at"], now=now)


class RunLock:
    """The per-account Redis lock, owned by one claim of one run and no longer than it lives.

    The value names the run, its claim (started_at) and worker; the TTL is one claim lease, renewed with
    the claim, so a killed holder's lock lapses within TASK_CLAIM_LEASE s, and a run that finds the lock
    held by a holder whose claim is dead (its run finished, requeued or taken over) takes it over at once.
    The ledger backs it up: a lock Redis forgot (restart) does not let a second run start beside a live one.
    """

    def __init__(self, key: str, *, run_id, claimed_at: datetime, task_name: str, scope: tuple[str, object]):
        self.key = f"finops:lock:{key}"
        self.name = key
        self.run_id = run_id
        self.claimed_at = claimed_at
        self.task_name = task_name
        self.scope = scope
        self.value = lock_value(
            run_id=run_id, claimed_at=claimed_at, worker=ledger.worker_name(), acquired_at=time.time()
        )
        self.held = False

    @property
    def ttl_ms(self) -> int:
        return int(settings.TASK_CLAIM_LEASE * 1000)

    def acquire(self) -> None:
        client = redis_client()
        try:
            acquired = bool(client.set(self.key, self.value, nx=True, px=self.ttl_ms))
            if not acquired:
                acquired = self._take_over_dead_holder(client) or self._outwait_younger_holder(client)
        except redis.RedisError as exc:
            raise TransientError(f"cannot reach Redis for lock {self.name}: {exc}") from exc
        if not acquired:
            holder = None
            with contextlib.suppress(redis.RedisError):
                holder = parse_lock_value(client.get(self.key))
            alive = f" (run {holder['run']}, alive)" if holder else ""
            raise LockHeld(f"another run holds the lock {self.name}{alive}")
        self.held = True
        older = self._older_live_run()
        if older is not None:
            self.release()
            raise LockHeld(f"another run holds the lock {self.name} (run {older}, per the ledger)")

    def _take_over_dead_holder(self, client) -> bool:
        raw = client.get(self.key)
        if raw is None:  # released meanwhile
            return bool(client.set(self.key, self.value, nx=True, px=self.ttl_ms))
        holder = parse_lock_value(raw)
        if holder is None:
            return False
        # Our own run's earlier delivery: the ledger claim we hold says that one is over.
        if holder["run"] != str(self.run_id) and lock_holder_alive(holder, now=timezone.now()):
            return False
        taken = bool(client.eval(_TAKE_OVER_LOCK, 1, self.key, raw, self.value, self.ttl_ms))
        if taken:
            logger.warning(
                "took over lock %s from a dead holder (run %s, claim of %s, worker %s)",
                self.name,
                holder["run"],
                holder["claimed_at"].isoformat(),
                holder.get("worker"),
            )
        return taken

    def _outwait_younger_holder(self, client) -> bool:
        """A holder claimed after us is about to give the lock back (it defers to older live runs, see
        _older_live_run): wait for that a moment instead of both runs retrying."""
        holder = parse_lock_value(client.get(self.key))
        if holder is None or holder["run"] == str(self.run_id) or holder["claimed_at"] <= self.claimed_at:
            return False
        deadline = time.monotonic() + 5.0  # the younger one releases within a query; 5 s covers a loaded host
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if client.set(self.key, self.value, nx=True, px=self.ttl_ms):
                return True
        return False

    def _older_live_run(self):
        """A run of the same task and scope claimed before ours and still alive (Redis lost its lock)."""
        field, value = self.scope
        return (
            TaskRun.objects.filter(
                task_name=self.task_name,
                state=RunState.STARTED,
                lease_expires_at__gt=timezone.now(),
                started_at__lt=self.claimed_at,
                **{f"kwargs__{field}": value},
            )
            .exclude(id=self.run_id)
            .values_list("id", flat=True)
            .first()
        )

    def renew(self) -> None:
        """Extend the TTL while ours; re-create it if Redis lost it (restarted empty); leave another's alone."""
        if not self.held:
            return
        outcome = redis_client().eval(_RENEW_LOCK, 1, self.key, self.value, self.ttl_ms)
        if outcome == 2:
            logger.warning("lock %s was gone from Redis (restart?): set again for run %s", self.name, self.run_id)
        elif not outcome:
            logger.warning("lock %s is held by another value; the ledger claim decides", self.name)

    def release(self) -> None:
        """Compare-and-delete; a failure here is logged, never the run's failure (its work may have committed)."""
        if not self.held:
            return
        self.held = False
        try:
            redis_client().eval(_RELEASE_LOCK, 1, self.key, self.value)
        except redis.RedisError as exc:
            lease = settings.TASK_CLAIM_LEASE
            logger.warning("lock %s not released (it lapses within %s s): %s", self.name, lease, exc)


class ClaimKeeper:
    """Keeps one execution's claim (and its lock) alive, and tells the execution when it lost it.

    A thread renews the ledger lease and the lock every TASK_CLAIM_RENEW s. The execution is fenced when
    its claim was taken over, or when no renewal succeeded for a whole lease (it may have been frozen, or
    cut off from the database, while the reconciler handed the run to another worker): fence() then
    asks for one renewal and raises Fenced if that fails, and every SQL statement of the task checks it.
    """

    def __init__(self, *, run_id, claimed_at: datetime, worker: str):
        self.worker = worker
        self.run_id = run_id
        self.claimed_at = claimed_at
        self.lock: RunLock | None = None
        self.lost: str | None = None
        self._renewed_at = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._renewed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"claim-{run_id}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        return False

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(settings.TASK_CLAIM_RENEW)
                self._wake.clear()
                if self._stop.is_set():
                    break
                self.renew_once()
                self._renewed.set()
        finally:
            connection.close()  # this thread's own connection

    def renew_once(self) -> None:
        started = time.monotonic()
        try:
            still_ours = ledger.renew(
                run_id=self.run_id, claimed_at=self.claimed_at, now=timezone.now(), worker=self.worker
            )
        except Exception as exc:  # database unreachable: the lease runs down; fence() decides
            logger.warning("claim of run %s not renewed: %s", self.run_id, exc)
            _drop_connection()
            still_ours = None
        if still_ours:
            self._renewed_at = started
        elif still_ours is False and self.lost is None:
            self.lost = "its claim was taken over, finished or cancelled meanwhile"
            logger.warning("run %s lost its claim: %s", self.run_id, self.lost)
        if self.lock is not None and self.lost is None:
            try:
                self.lock.renew()
            except redis.RedisError as exc:
                logger.warning("lock %s not renewed: %s", self.lock.name, exc)

    def fence(self) -> None:
        """Raise Fenced unless this execution still holds its claim."""
        if self.lost is None and not self._fresh():
            # Lapsed locally (frozen, or the database was away): renew now, in the keeper's thread
            # (its own connection; this one may be inside the task's transaction).
            self._renewed.clear()
            self._wake.set()
            self._renewed.wait(timeout=10)
            if self.lost is None and not self._fresh():
                self.lost = "its claim lapsed (no renewal for a whole lease)"
        if self.lost is not None:
            raise Fenced(f"run {self.run_id}: {self.lost}")

    def _fresh(self) -> bool:
        """Renewed within the lease, less a margin for the clocks of this host and the reconciler's."""
        lease = settings.TASK_CLAIM_LEASE
        return time.monotonic() - self._renewed_at < lease - min(5.0, lease * 0.2)

    def guard(self, execute, sql, params, many, context):
        """connection.execute_wrapper: a fenced execution writes nothing more."""
        self.fence()
        return execute(sql, params, many, context)


_keeper = threading.local()


def fence() -> None:
    """For tasks about to make an effect outside the database: raise Fenced if this run lost its claim."""
    keeper = getattr(_keeper, "current", None)
    if keeper is not None:
        keeper.fence()


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
            try:
                run_id = patiently(
                    lambda: ledger.claim(
                        celery_task_id=request.id,
                        task_name=self.name,
                        queue=(request.delivery_info or {}).get("routing_key") or queue_for(self.name),
                        args=list(args),
                        kwargs=kwargs,
                        correlation_id=corr,
                        retries=request.retries,
                        hostname=request.hostname,
                        now=now,
                    ),
                    what="claim",
                )
            except INFRA_ERRORS as exc:
                # The ledger stayed unreachable: nothing ran, so the delivery simply comes back later.
                logger.warning("%s %s: cannot claim the run, delivery postponed: %s", self.name, request.id, exc)
                raise self.retry(
                    exc=exc,
                    countdown=self._backoff(request.retries),
                    max_retries=None,
                    headers={correlation.TASK_HEADER: corr},
                ) from exc
            if run_id is None:
                logger.info(
                    "dropping delivery of %s %s: run already finished, cancelled or held", self.name, request.id
                )
                return {"skipped": "duplicate delivery"}
            request.run_id = str(run_id)
            return self._execute(run_id, now, args, kwargs)
        finally:
            correlation.correlation_id.reset(token)

    @staticmethod
    def _backoff(retries: int) -> float:
        return settings.TASK_RETRY_BACKOFF_BASE * (2**retries)

    def _execute(self, run_id, claimed_at: datetime, args, kwargs):
        """Run under a kept claim and the run's lock; the outcome is recorded after the work, fenced."""
        keeper = ClaimKeeper(run_id=run_id, claimed_at=claimed_at, worker=ledger.worker_name(self.request.hostname))
        error: Exception | None = None
        _keeper.current = keeper
        try:
            with keeper:
                try:
                    with connection.execute_wrapper(keeper.guard):
                        result = self._run_locked(keeper, run_id, claimed_at, args, kwargs)
                except Fenced as exc:
                    logger.warning("%s: %s; this execution stops and records nothing", self.name, exc)
                    raise Ignore() from exc
                except Retry:
                    raise
                except Exception as exc:
                    error = exc
        finally:
            _keeper.current = None
        if error is not None:
            return self._handle_error(run_id, claimed_at, error)
        try:
            recorded = patiently(
                lambda: ledger.finish(
                    run_id=run_id, state=RunState.SUCCESS, now=timezone.now(), result=result, claimed_at=claimed_at
                ),
                what="success",
            )
        except INFRA_ERRORS as exc:
            # The work is done and committed: never a failure. The result backend keeps the outcome and the
            # reconciler records it from there once the database is back.
            logger.error("%s: succeeded, but the ledger could not be told (the reconciler will): %s", self.name, exc)
            return result
        if not recorded:
            logger.warning("%s: run %s finished but its claim was no longer current; not recorded", self.name, run_id)
        return result

    def _run_locked(self, keeper: ClaimKeeper, run_id, claimed_at: datetime, args, kwargs):
        key = self.lock_key(kwargs)
        if key is not None:
            keeper.lock = RunLock(
                key,
                run_id=run_id,
                claimed_at=claimed_at,
                task_name=self.name,
                scope=(self.lock_on, kwargs[self.lock_on]),
            )
            keeper.lock.acquire()
        try:
            return self.run(*args, **kwargs)
        finally:
            if keeper.lock is not None:
                keeper.lock.release()

    def _handle_error(self, run_id, claimed_at: datetime, exc: Exception):
        request = self.request
        if isinstance(exc, (TransientError, *INFRA_ERRORS)):
            reason = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}".strip()
            reason = reason.splitlines()[0] if reason else type(exc).__name__
            # request.retries counts every retry; the ones spent waiting for a lock are not errors.
            lock_waits = min(max(int(_number_header(request, "lock_waits") or 0), 0), request.retries)
            if isinstance(exc, LockHeld):
                since = _number_header(request, "lock_wait_since") or time.time()
                waited = time.time() - since
                if waited < settings.TASK_LOCK_WAIT:
                    countdown = min(self._backoff(lock_waits), LOCK_POLL_MAX, settings.TASK_LOCK_WAIT - waited)
                    self._retry(run_id, claimed_at, exc, reason, countdown, lock_waits + 1, since)
                message = f"gave up after waiting {waited:.0f} s (TASK_LOCK_WAIT) for the lock: {reason}"
                self._fail(run_id, exc, message, claimed_at=claimed_at)
            else:
                attempts = request.retries - lock_waits
                if attempts < settings.TASK_MAX_RETRIES:
                    self._retry(run_id, claimed_at, exc, reason, self._backoff(attempts), lock_waits, None)
                self._fail(run_id, exc, f"gave up after {attempts} retries: {reason}", claimed_at=claimed_at)
        elif isinstance(exc, SoftTimeLimitExceeded):
            limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
            message = f"stopped at the soft time limit of {limit} s; work done so far was rolled back"
            self._fail(run_id, exc, message, claimed_at=claimed_at)
        elif isinstance(exc, PermanentError):
            self._fail(run_id, exc, str(exc), claimed_at=claimed_at)
        else:
            # The message for users, the traceback apart (platform admins and the logs only).
            self._fail(run_id, exc, f"{type(exc).__name__}: {exc}", tb=_format(exc), claimed_at=claimed_at)
        raise exc

    def _retry(self, run_id, claimed_at, exc, reason: str, countdown: float, lock_waits: int, lock_since) -> NoReturn:
        """Record the retry in the ledger and hand the run back to the broker for `countdown` s (raises Retry)."""
        request = self.request
        recorded = patiently(
            lambda: ledger.mark_retry(
                run_id=run_id,
                retries=request.retries + 1,
                error=reason,
                error_type=type(exc).__name__,
                countdown=countdown,
                claimed_at=claimed_at,
            ),
            what="retry",
        )
        if not recorded:  # cancelled or taken over meanwhile: nothing of ours to retry
            logger.warning("%s: run %s no longer ours, not retried: %s", self.name, run_id, reason)
            raise Ignore() from exc
        what = "waiting for its lock" if lock_since is not None else "transient error"
        logger.warning("%s: %s, retry %d in %.1fs: %s", self.name, what, request.retries + 1, countdown, reason)
        headers = {correlation.TASK_HEADER: correlation.get(), "run_id": str(run_id), "lock_waits": lock_waits}
        if lock_since is not None:
            headers["lock_wait_since"] = lock_since
        raise self.retry(exc=exc, countdown=countdown, max_retries=None, headers=headers) from exc

    def _fail(
        self, run_id, exc: BaseException, message: str, tb: str = "", *, claimed_at: datetime | None = None
    ) -> None:
        from .services.runs import run_dead_letter

        logger.error("%s failed: %s", self.name, message.splitlines()[0] if message else type(exc).__name__)
        if tb:
            logger.error("%s traceback (run %s):\n%s", self.name, run_id, tb)
        try:
            failed = patiently(
                lambda: ledger.finish(
                    run_id=run_id,
                    state=RunState.FAILURE,
                    now=timezone.now(),
                    error=message,
                    error_type=type(exc).__name__,
                    error_traceback=tb,
                    claimed_at=claimed_at,
                ),
                what="failure",
            )
            # A run cancelled meanwhile stays cancelled: no dead letter to replay, no failure alert.
            if failed:
                run_dead_letter(run_id=run_id)
        except Exception:  # the ledger must not hide the task's own error
            logger.exception("could not record the failure of run %s", run_id)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=8))


def _header(request, key: str):
    value = getattr(request, key, None)
    if value is None and isinstance(request.headers, dict):
        value = request.headers.get(key)
    return value


def _number_header(request, key: str) -> float | None:
    """A number this platform put in the message's headers; None when absent (a republished message) or not one."""
    try:
        value = float(_header(request, key))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# What each worker executes and holds, written at every worker heartbeat (2 s) and read by GET /tasks/active
# instead of a broadcast to every worker (1-2 s per request). Lapses with the worker: a killed one disappears.
WORKER_STATE_KEY = "finops:worker:state:"
WORKER_STATE_TTL = 10
# What the control room shows of each worker beside its tasks: set once the worker is ready (consumer known).
_worker_info: dict = {}


@signals.worker_ready.connect
def _remember_worker_info(sender=None, **_):
    try:
        _worker_info["concurrency"] = getattr(sender.controller, "concurrency", None) or sender.pool.num_processes
        _worker_info["queues"] = sorted(queue.name for queue in sender.task_consumer.queues)
    except Exception as exc:  # informative only
        logger.debug("worker info not recorded: %s", exc)


@signals.heartbeat_sent.connect
def _publish_worker_state(sender=None, **_):
    from celery.worker import state

    try:
        hostname = sender.eventer.hostname
        active = [request.info() for request in list(state.active_requests)]
        running = {entry["id"] for entry in active}
        reserved, scheduled = [], []
        for request in list(state.reserved_requests):
            if request.id in running:
                continue
            if request.eta:
                scheduled.append({"eta": str(request.eta), "priority": None, "request": request.info()})
            else:
                reserved.append(request.info())
        snapshot = {"hostname": hostname, "at": time.time(), "active": active, "reserved": reserved}
        snapshot["scheduled"] = scheduled
        snapshot.update(_worker_info)
        redis_client().set(WORKER_STATE_KEY + hostname, json.dumps(snapshot, default=str), ex=WORKER_STATE_TTL)
    except Exception as exc:  # the heartbeat itself must go on
        logger.debug("worker state not published: %s", exc)


@signals.worker_shutdown.connect
def _forget_worker_state(sender=None, **_):
    with contextlib.suppress(Exception):
        redis_client().delete(WORKER_STATE_KEY + sender.hostname)


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

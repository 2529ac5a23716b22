"""The read replica: which reads may go to `DATABASE_REPLICA_URL`, and when they fall back to the primary.

1. `ReplicaMiddleware` marks a safe request (GET/HEAD) to the admin or the read API as "replica allowed" (a
   contextvar, so nothing in the views has to know); `replica_reads()` does the same for a command or task
   that only reports (the FOCUS export). Everything else — Celery tasks, POSTs, the health probe — reads the
   primary.
2. `ReplicaRouter` sends reads of the reporting models (cost lines, rollups, tags, anomalies, recommendations,
   budget alerts) to the replica only inside that context, and only while
   - no write happened in it (any `db_for_write` pins the rest of the request or task to the primary, so a
     read sees its own write),
   - the default connection is not inside an atomic block (a transaction reads what it wrote),
   - the client did not write within DATABASE_REPLICA_STICKY_SECONDS (a cookie set on unsafe requests: the
     list page after "save" shows the save),
   - the replica is up and its replay lag is within DATABASE_REPLICA_MAX_LAG_SECONDS.
   The ledger, Celery beat's tables, auth, sessions and configuration always use the primary, as do all
   writes and migrations.
3. The replica's verdict is probed with its own short-timeout connection (never the pool, whose checkout
   waits DB_POOL_TIMEOUT on a dead server) and cached in-process for DATABASE_REPLICA_CHECK_SECONDS. Lag is
   zero when the replica has replayed the primary's current WAL position (looked at again for up to 150 ms),
   otherwise the age of its last replayed commit (pg_last_xact_replay_timestamp). When it goes down, "since
   when" is kept in Redis so every process reports the same moment; the replica's pool is replaced at each
   change (a pool that saw its server die backs off its reconnects).
4. A safe request whose replica read fails with a database error anyway (the replica died between probes)
   is marked down and served again from the primary (`process_exception`): pages keep answering.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError, connections

logger = logging.getLogger(__name__)

REPLICA = "replica"
PRIMARY = "default"
SAFE_METHODS = ("GET", "HEAD")
# Pages that only report: the admin's lists and dashboards, the read API (incl. /api/v1/dashboards/, the
# export). Auth and the ledger under them still read the primary: the router decides by model.
REPLICA_PATH_PREFIXES = ("/admin/", "/api/v1/")
# Written by ingest and the analysis tasks only, read by lists, dashboards and exports.
REPORTING_MODELS = frozenset(
    {
        "costs_app.costlineitem",
        "costs_app.costdailyrollup",
        "costs_app.costtagrollup",
        "costs_app.costmonthrollup",
        "costs_app.costtagmonthrollup",
        "costs_app.costallocationtag",
        "costs_app.anomaly",
        "costs_app.recommendation",
        "costs_app.budgetalert",
    }
)
STICKY_COOKIE = "finops_primary"
DOWN_SINCE_KEY = "finops:replica:down_since"


@dataclass
class _ReadScope:
    allowed: bool = False
    pinned: bool = False  # a write happened in this scope: the rest reads the primary
    used: bool = False  # a read went to the replica (a database error may then be the replica's)


_scope: contextvars.ContextVar[_ReadScope | None] = contextvars.ContextVar("finops_read_scope", default=None)


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


@contextlib.contextmanager
def replica_reads(allowed: bool = True) -> Iterator[_ReadScope]:
    """Reporting reads inside may use the replica (subject to the router's rules). Nested in a request's scope,
    the request's verdict holds: an unsafe request, a client that just wrote, a write earlier in it."""
    outer = _scope.get()
    if outer is not None and allowed:
        yield outer  # one scope: its writes pin the request, its replica reads are the request's (fallback)
        return
    scope = _ReadScope(allowed=allowed)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


# --- the replica's verdict -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStatus:
    available: bool
    lag_s: float | None
    reason: str = ""
    down_since: datetime | None = None
    checked_at: float = 0.0


_lock = threading.Lock()
_status: ReplicaStatus | None = None


def _probe() -> tuple[bool, float | None, str]:
    """(usable, lag seconds, why not). One short connection to the replica, one cheap query on the primary."""
    import psycopg

    with connections[PRIMARY].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        primary_lsn = cursor.fetchone()[0]
    params = connections[REPLICA].get_connection_params()
    params.setdefault("connect_timeout", 2)
    params["autocommit"] = True
    try:
        with psycopg.connect(**params) as conn:
            conn.execute("SET statement_timeout = 2000")
            # A healthy standby is milliseconds behind: after a long idle spell the age of its last replayed
            # commit is large while the primary's first new commit is in flight, so look again briefly.
            for attempt in range(4):
                in_recovery, caught_up, replay_age = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn,"
                    " extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8",
                    [primary_lsn],
                ).fetchone()
                if caught_up or not in_recovery or attempt == 3:
                    break
                time.sleep(0.05)
    except psycopg.Error as exc:
        return False, None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    if not in_recovery:
        return True, 0.0, ""  # the primary itself (or a promoted standby): nothing to lag behind
    lag = 0.0 if caught_up else max(float(replay_age or 0.0), 0.0)
    limit = settings.DATABASE_REPLICA_MAX_LAG_SECONDS
    if lag > limit:
        return False, lag, f"replication lag {lag:.1f} s beyond DATABASE_REPLICA_MAX_LAG_SECONDS={limit:g}"
    return True, lag, ""


def _down_since(now: datetime, down: bool) -> datetime | None:
    """The moment the replica went down, shared through Redis (best effort: this process's moment otherwise)."""
    import redis

    from finops.redis_url import redis_from_url

    try:
        client = redis_from_url(settings.CELERY_BROKER_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        with client:
            if not down:
                client.delete(DOWN_SINCE_KEY)
                return None
            client.set(DOWN_SINCE_KEY, now.timestamp(), nx=True, ex=7 * 86400)
            raw = client.get(DOWN_SINCE_KEY)
        return datetime.fromtimestamp(float(raw), tz=UTC) if raw else now
    except redis.RedisError:
        return now if down else None


def _fresh(status: ReplicaStatus | None) -> bool:
    return status is not None and time.monotonic() - status.checked_at < settings.DATABASE_REPLICA_CHECK_SECONDS


def replica_status(*, force: bool = False) -> ReplicaStatus | None:
    """The cached verdict on the replica (None without one); probed again once DATABASE_REPLICA_CHECK_SECONDS old."""
    global _status
    if not replica_configured():
        return None
    current = _status
    if not force and _fresh(current):
        return current
    # Another thread probing (a blackholed replica takes connect_timeout): the others read on with the last
    # verdict rather than queue behind it; before any verdict, the primary.
    if not _lock.acquire(blocking=force):
        return current or ReplicaStatus(False, None, "not checked yet")
    try:
        current = _status
        if not force and _fresh(current):
            return current
        try:
            available, lag, reason = _probe()
        except DatabaseError as exc:  # the primary itself did not answer: nothing to compare with
            available, lag, reason = False, None, f"primary not reachable to compare: {type(exc).__name__}"
        _status = _settle(available, lag, reason, current)
        return _status
    finally:
        _lock.release()


def _settle(available: bool, lag: float | None, reason: str, previous: ReplicaStatus | None) -> ReplicaStatus:
    now = datetime.now(UTC)
    was_down = previous is not None and not previous.available
    since = previous.down_since if was_down else None
    if available and (was_down or previous is None):
        _down_since(now, down=False)
        if was_down:
            _reset_pool()
            logger.warning("read replica available again (lag %.1f s): reporting reads go back to it", lag or 0.0)
    elif not available and not was_down:
        since = _down_since(now, down=True)
        _reset_pool()
        logger.warning("read replica unavailable (%s): reporting reads fall back to the primary", reason)
    return ReplicaStatus(available, lag, reason, since, time.monotonic())


def _reset_pool() -> None:
    """A fresh pool at each change: a pool whose server was down backs off its reconnects, and would keep a
    page waiting DB_REPLICA_POOL_TIMEOUT after the replica is back; while it is down, nothing retries."""
    with contextlib.suppress(Exception):
        connections[REPLICA].close()
        connections[REPLICA].close_pool()


def replica_failed(reason: str) -> None:
    """A read on the replica failed between probes: mark it down now (the next probe decides when it is back)."""
    global _status
    with _lock:
        _status = _settle(False, None, reason, _status)


# --- the router and the middleware ------------------------------------------------------------------------


def _label(model) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


def _in_transaction() -> bool:
    """An atomic block of ours is open on the primary (a test case's wrapping one does not count, as for
    Django's own durable-atomic check), so reads must see what it wrote."""
    return any(not getattr(block, "_from_testcase", False) for block in connections[PRIMARY].atomic_blocks)


class ReplicaRouter:
    """Reporting reads of a replica-allowed scope to the replica; everything else to the primary."""

    def db_for_read(self, model, **hints):
        scope = _scope.get()
        if scope is None or not scope.allowed or scope.pinned or not replica_configured():
            return None
        if _label(model) not in REPORTING_MODELS or _in_transaction():
            return None
        status = replica_status()
        if status is None or not status.available:
            return None
        scope.used = True
        return REPLICA

    def db_for_write(self, model, **hints):
        scope = _scope.get()
        if scope is not None:
            scope.pinned = True
        return PRIMARY

    def allow_relation(self, obj1, obj2, **hints):
        # Both aliases hold the same data: a replica-read row may point at a primary-read one.
        if {obj1._state.db, obj2._state.db} <= {PRIMARY, REPLICA, None}:
            return True
        return None

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return False if db == REPLICA else None  # a standby is read-only: it gets the schema by replication


class ReplicaMiddleware:
    """Safe requests to the admin and the read API may read reporting models from the replica."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not replica_configured():
            return self.get_response(request)
        allowed = (
            request.method in SAFE_METHODS
            and request.path.startswith(REPLICA_PATH_PREFIXES)
            and STICKY_COOKIE not in request.COOKIES
        )
        with replica_reads(allowed):
            response = self.get_response(request)
        if request.method not in SAFE_METHODS:
            # This client's next pages read the primary until the replica has surely replayed this write.
            response.set_cookie(
                STICKY_COOKIE,
                "1",
                max_age=settings.DATABASE_REPLICA_STICKY_SECONDS,
                httponly=True,
                samesite="Lax",
                secure=request.is_secure(),
            )
        return response

    def process_exception(self, request, exception):
        scope = _scope.get()
        if scope is None or not scope.allowed or not scope.used or not isinstance(exception, DatabaseError):
            return None
        replica_failed(f"{type(exception).__name__}: {str(exception).strip()[:200]}")
        scope.allowed = False
        scope.used = False
        with contextlib.suppress(Exception):
            connections[REPLICA].close()
        return self.get_response(request)  # the same safe request again, on the primary

"""Health of the task system: database, broker, result backend, workers and beat, each checked for real.

Beside those (any of them failing makes the status "fail"), three checks compare the ledger with what is
really there and make the status "degraded", naming what and since when: runs the ledger says are queued
but the broker does not hold (or a broker that lost its data), runs whose executor stopped renewing its
claim, and per-account locks whose holder's claim is dead. A read replica (when configured) that is down or
lags too far is "degraded" too: its reads fall back to the primary (finops/db_router.py).
"""

import json
import time
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count, Min
from django.utils import timezone

from finops.db_router import replica_configured, replica_status
from finops.redis_url import redis_from_url

from ..beat import HEARTBEAT_KEY, LEADER_KEY
from ..models import RunState, TaskRun
from ..selectors import BrokerUnavailable, workers_ping

# Short, so a dead dependency makes the check fail fast instead of hanging the load balancer's probe.
REDIS_TIMEOUT = 2.0


def _redis(url: str) -> redis.Redis:
    return redis_from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)


def _timed(check) -> dict:
    started = time.monotonic()
    try:
        outcome = check() or {}
        outcome = {"ok": True, **outcome}
    except Degraded as exc:
        outcome = {"ok": False, "error": str(exc), "issues": exc.issues}
    except Exception as exc:
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    outcome["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    return outcome


def _database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {}


def _broker() -> dict:
    with _redis(settings.CELERY_BROKER_URL) as client:
        client.ping()
    return {}


def _result_backend() -> dict:
    url = settings.CELERY_RESULT_BACKEND or ""
    if not url.startswith(("redis://", "rediss://", "sentinel://")):
        return {"detail": "not a Redis backend; not checked"}
    with _redis(url) as client:
        client.ping()
    return {}


def _workers(timeout: float) -> dict:
    try:
        names = workers_ping(timeout=timeout)
    except BrokerUnavailable as exc:
        raise RuntimeError(str(exc)) from exc
    if not names:
        raise RuntimeError(f"no worker answered a ping within {timeout} s")
    return {"count": len(names), "names": names}


def beat_heartbeat(now: float) -> dict:
    """The beat leader's heartbeat age and lease holder; RuntimeError when beat is missing or stale."""
    return _beat(now)


def _beat(now: float) -> dict:
    max_age = settings.BEAT_HEARTBEAT_MAX_AGE
    with _redis(settings.CELERY_BROKER_URL) as client:
        raw = client.get(HEARTBEAT_KEY)
        leader = client.get(LEADER_KEY)
    if raw is None:
        raise RuntimeError("beat has never written its heartbeat (not running?)")
    age = now - float(raw)
    since = datetime.fromtimestamp(float(raw), tz=UTC).isoformat()
    if age > max_age:
        raise RuntimeError(
            f"beat heartbeat is {age:.0f} s old (max {max_age} s): beat is not running (last seen {since})"
        )
    return {"age_s": round(age, 1), "max_age_s": max_age, "leader": (leader or b"").decode(), "since": since}


def _replica() -> dict:
    """The read replica (when configured): down or lagging is "degraded", since reads fall back to the primary."""
    status = replica_status(force=True)
    if not status.available:
        what = f"read replica unavailable ({status.reason}); reporting reads go to the primary"
        raise Degraded([_issue(what, status.down_since)])
    return {"lag_s": round(status.lag_s or 0.0, 1), "max_lag_s": settings.DATABASE_REPLICA_MAX_LAG_SECONDS}


def _issue(what: str, since: datetime | None, **detail) -> dict:
    return {"what": what, "since": since.isoformat() if since else "", **detail}


def _broker_holds(client: redis.Redis) -> dict[str, int]:
    """Messages the broker holds per queue: waiting in its list, or delivered to a worker and not yet acked."""
    held = {queue: client.llen(queue) for queue in settings.TASK_QUEUES}
    for raw in client.hvals("unacked"):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        held[routing_key] = held.get(routing_key, 0) + 1
    return held


def _queued_runs(now: datetime) -> dict:
    """Runs the ledger holds as queued that the broker does not: lost messages, or a broker restarted empty."""
    from .runs import BROKER_SENTINEL_KEY

    issues = []
    with _redis(settings.CELERY_BROKER_URL) as client:
        sentinel = client.get(BROKER_SENTINEL_KEY)
        waiting = TaskRun.objects.filter(state__in=(RunState.QUEUED, RunState.RETRY))
        if sentinel is None and waiting.exists():
            info = client.info("server")
            restarted = now - timedelta(seconds=int(info.get("uptime_in_seconds", 0)))
            issues.append(
                _issue(
                    f"the broker (Redis run_id {info.get('run_id')}) lost its data: {waiting.count()} queued or "
                    "retrying runs not yet published again (the reconciler does it at its next pass)",
                    restarted,
                )
            )
        held = _broker_holds(client)
    grace = timedelta(seconds=settings.HEALTH_QUEUED_GRACE)
    stale = (
        TaskRun.objects.filter(state=RunState.QUEUED, enqueued_at__lt=now - grace)
        .values("queue")
        .annotate(count=Count("id"), oldest=Min("enqueued_at"))
    )
    for row in stale:
        in_broker = held.get(row["queue"], 0)
        if row["count"] > in_broker:
            issues.append(
                _issue(
                    f"queue {row['queue']}: {row['count']} runs QUEUED in the ledger for over "
                    f"{settings.HEALTH_QUEUED_GRACE} s, but only {in_broker} messages in the broker",
                    row["oldest"],
                    queue=row["queue"],
                    count=row["count"],
                )
            )
    return _verdict(issues)


def _stuck_runs(now: datetime) -> dict:
    """STARTED runs whose executor stopped renewing the claim, and retries long past their countdown."""
    issues = []
    lease = timedelta(seconds=settings.TASK_CLAIM_LEASE)
    for run in TaskRun.objects.filter(state=RunState.STARTED, lease_expires_at__lt=now).order_by("lease_expires_at")[
        :20
    ]:
        issues.append(
            _issue(
                f"run {run.celery_task_id} of {run.task_name} on {run.worker}: STARTED, its claim not renewed "
                "(worker dead, frozen or cut off); the reconciler hands it over at its next pass",
                run.lease_expires_at - lease,
                run=run.celery_task_id,
            )
        )
    for run in TaskRun.objects.filter(state=RunState.RETRY, lease_expires_at__lt=now)[:20]:
        issues.append(
            _issue(
                f"run {run.celery_task_id} of {run.task_name}: waiting to retry long past its countdown",
                run.lease_expires_at,
                run=run.celery_task_id,
            )
        )
    return _verdict(issues)


def _locks(now: datetime) -> dict:
    """Per-account locks whose holder's claim is dead (the next run takes them over; they lapse within a lease)."""
    from ..platform import lock_holder_alive, parse_lock_value

    issues = []
    with _redis(settings.CELERY_BROKER_URL) as client:
        keys = list(client.scan_iter(match="finops:lock:*", count=500))[:500]
        values = client.mget(keys) if keys else []
    for key, raw in zip(keys, values, strict=True):
        holder = parse_lock_value(raw)
        if holder is None or lock_holder_alive(holder, now=now):
            continue
        issues.append(
            _issue(
                f"lock {key.decode().removeprefix('finops:lock:')}: held by run {holder['run']} (worker "
                f"{holder.get('worker')}) whose claim is dead",
                datetime.fromtimestamp(float(holder.get("since", 0)), tz=UTC),
            )
        )
    return _verdict(issues)


def _verdict(issues: list[dict]) -> dict:
    if issues:
        raise Degraded(issues)
    return {"issues": []}


class Degraded(RuntimeError):
    def __init__(self, issues: list[dict]):
        super().__init__("; ".join(f"{issue['what']} (since {issue['since']})" for issue in issues))
        self.issues = issues


def system_health(*, worker_timeout: float = 1.0) -> dict:
    """{"status": "ok"|"degraded"|"fail", "checks": {name: {"ok": bool, ...}}, "failing": [...], "degraded": [...]}.

    "fail": a component is down (failing names it); "degraded": all up, but the ledger and reality disagree
    (degraded names the checks, each lists its issues with since when).
    """
    checks = {
        "database": _timed(_database),
        "broker": _timed(_broker),
        "result_backend": _timed(_result_backend),
    }
    if checks["broker"]["ok"]:
        checks["workers"] = _timed(lambda: _workers(worker_timeout))
        checks["beat"] = _timed(lambda: _beat(time.time()))
    else:
        # Without the broker neither can be asked; say so rather than wait for more timeouts.
        checks["workers"] = {"ok": False, "error": "broker unreachable", "latency_ms": 0.0}
        checks["beat"] = {"ok": False, "error": "broker unreachable (heartbeat is kept there)", "latency_ms": 0.0}
    failing = [name for name, check in checks.items() if not check["ok"]]
    # The ledger against reality: "degraded" names what is stuck or lost, and since when.
    now = timezone.now()
    if checks["database"]["ok"] and checks["broker"]["ok"]:
        checks["queued_runs"] = _timed(lambda: _queued_runs(now))
        checks["stuck_runs"] = _timed(lambda: _stuck_runs(now))
        checks["locks"] = _timed(lambda: _locks(now))
    if checks["database"]["ok"] and replica_configured():
        checks["replica"] = _timed(_replica)
    degraded = [
        name for name in ("queued_runs", "stuck_runs", "locks", "replica") if name in checks and not checks[name]["ok"]
    ]
    status = "fail" if failing else "degraded" if degraded else "ok"
    return {"status": status, "checks": checks, "failing": failing, "degraded": degraded}


def liveness() -> bool:
    """What a load balancer needs from the web process: its own database and broker answer.

    Workers and beat are deliberately left out: a dead worker must not take the API out of rotation.
    """
    return _timed(_database)["ok"] and _timed(_broker)["ok"]

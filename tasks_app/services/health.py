"""Health of the task system: database, broker, result backend, workers and beat, each checked for real."""

import time

import redis
from django.conf import settings
from django.db import connection

from ..beat import HEARTBEAT_KEY
from ..selectors import BrokerUnavailable, workers_ping

# Short, so a dead dependency makes the check fail fast instead of hanging the load balancer's probe.
REDIS_TIMEOUT = 2.0


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)


def _timed(check) -> dict:
    started = time.monotonic()
    try:
        outcome = check() or {}
        outcome = {"ok": True, **outcome}
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
    if not url.startswith(("redis://", "rediss://")):
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


def _beat(now: float) -> dict:
    max_age = settings.BEAT_HEARTBEAT_MAX_AGE
    with _redis(settings.CELERY_BROKER_URL) as client:
        raw = client.get(HEARTBEAT_KEY)
    if raw is None:
        raise RuntimeError("beat has never written its heartbeat (not running?)")
    age = now - float(raw)
    if age > max_age:
        raise RuntimeError(f"beat heartbeat is {age:.0f} s old (max {max_age} s): beat is not running")
    return {"age_s": round(age, 1), "max_age_s": max_age}


def system_health(*, worker_timeout: float = 1.0) -> dict:
    """{"status": "ok"|"fail", "checks": {name: {"ok": bool, ...}}, "failing": [names]}."""
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
    return {"status": "fail" if failing else "ok", "checks": checks, "failing": failing}


def liveness() -> bool:
    """What a load balancer needs from the web process: its own database and broker answer.

    Workers and beat are deliberately left out: a dead worker must not take the API out of rotation.
    """
    return _timed(_database)["ok"] and _timed(_broker)["ok"]

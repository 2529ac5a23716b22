"""Faults of the infrastructure under a running task, made for real: its PostgreSQL connection terminated by the
server, its Redis killed. A database or broker error inside the work is retried like any transient error (never a
final failure at once); a fault after the work committed (the lock's release) never makes the run a failure.

Deliveries are run in-process as a worker's pool process runs them (tests/tasks_app/test_platform_ledger.py).
"""

import logging
import threading
import time

import psycopg
import pytest
from celery.exceptions import Retry

from tasks_app import platform
from tasks_app.models import DeadLetter, RunState, TaskRun
from tasks_app.tasks import platform_probe
from tests.celery_procs import database_url
from tests.reliability.stack import OwnRedis

from .test_platform_ledger import deliver, enqueued

pytestmark = pytest.mark.django_db(transaction=True)  # the task's own connection must be a real, separate one


def when_started(run: TaskRun, fault, *, after: float = 0.3) -> threading.Thread:
    """Start a thread that waits until `run` is STARTED in the ledger, then `after` s more, then does `fault`."""

    def watch():
        with psycopg.connect(database_url(), autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = watcher.execute("SELECT state FROM tasks_app_taskrun WHERE id = %s", [run.id]).fetchone()
                if row and row[0] == RunState.STARTED:
                    break
                time.sleep(0.02)
            time.sleep(after)
            fault(watcher)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def terminate_other_backends(watcher) -> None:
    """What a PostgreSQL restart or a failover does to every connection but this one."""
    watcher.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


@pytest.fixture
def own_redis(tmp_path, settings, monkeypatch):
    """The platform's Redis (locks, probe flags) on a server of this test's own, which it may kill."""
    server = OwnRedis(tmp_path)
    server.start()
    settings.CELERY_BROKER_URL = f"{server.url}/0"
    monkeypatch.setattr(platform, "_redis_client", None)  # built again from the setting above
    yield server
    server.kill()


def test_a_database_connection_lost_inside_the_work_is_retried_then_succeeds():
    # given: a run whose work reads the database after a while
    run = enqueued("platform_probe", sleep=1.0, query=True)
    # when: the server terminates its connections while it sleeps
    watcher = when_started(run, terminate_other_backends)
    with pytest.raises(Retry):
        deliver(platform_probe, run.celery_task_id, sleep=1.0, query=True)
    watcher.join(timeout=30)
    # then: a retry, with the true reason, recorded once the database answered again; no failure, no dead letter
    run.refresh_from_db()
    assert run.state == RunState.RETRY, (run.state, run.error)
    assert run.retries == 1
    assert run.error.startswith("OperationalError"), run.error
    assert "time limit" not in run.error
    assert not DeadLetter.objects.exists()
    # and the retry's delivery runs to success
    result = deliver(platform_probe, run.celery_task_id, retries=1, sleep=0, query=True)
    run.refresh_from_db()
    assert result["attempts"] == 2
    assert run.state == RunState.SUCCESS


def test_redis_lost_inside_the_work_is_retried(own_redis):
    # given: a run under its account's lock whose work reads Redis after a while (a probe flag)
    kwargs = {"sleep": 1.0, "account_id": 41, "fail_while_flag": "never-set"}
    run = enqueued("platform_probe", **kwargs)
    # when: Redis dies while it sleeps
    watcher = when_started(run, lambda _: own_redis.kill())
    with pytest.raises(Retry):
        deliver(platform_probe, run.celery_task_id, **kwargs)
    watcher.join(timeout=30)
    # then
    run.refresh_from_db()
    assert run.state == RunState.RETRY, (run.state, run.error)
    assert run.error.startswith("ConnectionError"), run.error
    assert not DeadLetter.objects.exists()


def test_a_run_whose_work_is_done_is_a_success_though_its_lock_cannot_be_released(own_redis, caplog):
    # given: a run under its account's lock; its work touches Redis no more after taking the lock
    kwargs = {"sleep": 1.0, "account_id": 42}
    run = enqueued("platform_probe", **kwargs)
    # when: Redis dies before the work ends, so releasing the lock fails
    watcher = when_started(run, lambda _: own_redis.kill())
    with caplog.at_level(logging.WARNING, logger="tasks_app.platform"):
        result = deliver(platform_probe, run.celery_task_id, **kwargs)
    watcher.join(timeout=30)
    # then: the outcome is the work's, not the release's
    run.refresh_from_db()
    assert result["attempts"] == 1
    assert run.state == RunState.SUCCESS, (run.state, run.error)
    assert not DeadLetter.objects.exists()
    assert any("not released" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]

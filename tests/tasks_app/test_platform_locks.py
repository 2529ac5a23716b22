"""Locks that belong to a run's claim, and what health says of claims and locks that died."""

import json
import uuid
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from finops.errors import TransientError
from tasks_app import ledger
from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.platform import RunLock, parse_lock_value
from tasks_app.services.health import system_health
from tasks_app.services.runs import BROKER_SENTINEL_KEY
from tests.celery_procs import flush_broker

pytestmark = pytest.mark.django_db
KEY = "sync_provider_cost_data:account_id:5"


@pytest.fixture
def broker():
    flush_broker()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.set(BROKER_SENTINEL_KEY, json.dumps({"run_id": "test"}))
    return client


def claimed(*, age: float = 0.0, account_id: int = 5) -> tuple[TaskRun, object]:
    """A sync run claimed `age` s ago; returns the run and its claim token (started_at)."""
    run = ledger.record_enqueue(
        task_name="sync_provider_cost_data",
        celery_task_id=str(uuid.uuid4()),
        queue="cost_sync",
        args=[],
        kwargs={"account_id": account_id},
        triggered_by=TriggerKind.COMMAND,
    )
    now = timezone.now() - timedelta(seconds=age)
    TaskRun.objects.filter(id=run.id).update(enqueued_at=now - timedelta(seconds=1))
    ledger.claim(
        celery_task_id=run.celery_task_id,
        task_name=run.task_name,
        queue="cost_sync",
        args=[],
        kwargs={"account_id": account_id},
        correlation_id="",
        retries=0,
        hostname="w@host",
        now=now,
    )
    return TaskRun.objects.get(id=run.id), now


def lock_for(run: TaskRun, claimed_at) -> RunLock:
    return RunLock(
        KEY,
        run_id=run.id,
        claimed_at=claimed_at,
        task_name=run.task_name,
        scope=("account_id", run.kwargs["account_id"]),
    )


def test_the_lock_names_its_run_and_claim_and_lives_one_claim_lease(broker):
    # given
    run, token = claimed()
    lock = lock_for(run, token)
    # when
    lock.acquire()
    # then
    holder = parse_lock_value(broker.get(f"finops:lock:{KEY}"))
    assert holder["run"] == str(run.id) and holder["claimed_at"] == token
    assert 0 < broker.pttl(f"finops:lock:{KEY}") <= settings.TASK_CLAIM_LEASE * 1000
    lock.release()
    assert not broker.exists(f"finops:lock:{KEY}")


def test_a_lock_whose_holder_is_alive_makes_the_next_run_wait(broker):
    # given
    holder, holder_token = claimed(age=2)
    lock_for(holder, holder_token).acquire()
    run, token = claimed()
    # when / then
    with pytest.raises(TransientError, match=f"another run holds the lock {KEY}"):
        lock_for(run, token).acquire()
    assert parse_lock_value(broker.get(f"finops:lock:{KEY}"))["run"] == str(holder.id)


@pytest.mark.parametrize("death", ["requeued", "lease_expired", "finished"])
def test_a_lock_whose_holder_is_dead_is_taken_over_at_once(broker, death):
    # given: the holder's claim died (its worker was killed; the reconciler requeued it, or not yet)
    holder, holder_token = claimed(age=2)
    lock_for(holder, holder_token).acquire()
    if death == "requeued":
        TaskRun.objects.filter(id=holder.id).update(state=RunState.QUEUED, lease_expires_at=None)
    elif death == "lease_expired":
        TaskRun.objects.filter(id=holder.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    else:
        ledger.finish(run_id=holder.id, state=RunState.SUCCESS, now=timezone.now(), claimed_at=holder_token)
    run, token = claimed()
    # when
    lock_for(run, token).acquire()
    # then: no waiting for a TTL
    assert parse_lock_value(broker.get(f"finops:lock:{KEY}"))["run"] == str(run.id)


def test_a_later_delivery_of_the_same_run_takes_over_its_earlier_claims_lock(broker):
    # given: the run's first execution died holding the lock; the run was claimed again (a new token)
    run, first = claimed(age=5)
    lock_for(run, first).acquire()
    later = timezone.now()
    TaskRun.objects.filter(id=run.id).update(started_at=later)
    # when
    lock_for(run, later).acquire()
    # then
    assert parse_lock_value(broker.get(f"finops:lock:{KEY}"))["claimed_at"] == later


def test_a_lock_redis_forgot_does_not_let_a_second_run_start_beside_a_live_one(broker):
    # given: a live run whose lock vanished (Redis restarted empty)
    older, older_token = claimed(age=3)
    lock_for(older, older_token).acquire()
    broker.delete(f"finops:lock:{KEY}")
    run, token = claimed()
    # when / then: the ledger says the older run is alive
    with pytest.raises(TransientError, match="per the ledger"):
        lock_for(run, token).acquire()
    assert not broker.exists(f"finops:lock:{KEY}")  # released again, for the older run to take back


def test_renewal_extends_our_lock_and_recreates_it_after_redis_lost_it_but_never_steals_it(broker):
    run, token = claimed()
    lock = lock_for(run, token)
    lock.acquire()
    broker.pexpire(f"finops:lock:{KEY}", 1000)
    lock.renew()
    assert broker.pttl(f"finops:lock:{KEY}") > 1000
    broker.delete(f"finops:lock:{KEY}")
    lock.renew()
    assert parse_lock_value(broker.get(f"finops:lock:{KEY}"))["run"] == str(run.id)
    broker.set(f"finops:lock:{KEY}", "someone else")
    lock.renew()
    lock.release()
    assert broker.get(f"finops:lock:{KEY}") == b"someone else"


def test_finish_refuses_the_late_result_of_a_claim_that_was_taken_over():
    # given: a run claimed, then (its claim lapsed) claimed again by another delivery
    run, first = claimed(age=120)
    TaskRun.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    second = timezone.now()
    TaskRun.objects.filter(id=run.id).update(started_at=second, lease_expires_at=ledger.lease_end(second))
    # when / then
    assert not ledger.renew(run_id=run.id, claimed_at=first, now=timezone.now())
    assert not ledger.finish(run_id=run.id, state=RunState.SUCCESS, now=timezone.now(), claimed_at=first)
    assert ledger.finish(run_id=run.id, state=RunState.SUCCESS, now=timezone.now(), claimed_at=second)


def test_a_claim_lost_with_a_database_crash_is_still_its_executors():
    # given: the claim (asynchronous commit) never became durable: the row is QUEUED as before it
    run, token = claimed()
    TaskRun.objects.filter(id=run.id).update(state=RunState.QUEUED, started_at=None, lease_expires_at=None)
    # when: the executor renews, then records its outcome
    assert ledger.renew(run_id=run.id, claimed_at=token, now=timezone.now(), worker="w@host/1")
    assert ledger.finish(run_id=run.id, state=RunState.SUCCESS, now=timezone.now(), claimed_at=token)
    # then
    assert TaskRun.objects.get(id=run.id).state == RunState.SUCCESS


def test_but_not_once_the_reconciler_has_enqueued_it_again():
    run, token = claimed(age=120)
    TaskRun.objects.filter(id=run.id).update(state=RunState.QUEUED, enqueued_at=timezone.now(), lease_expires_at=None)
    assert not ledger.finish(run_id=run.id, state=RunState.SUCCESS, now=timezone.now(), claimed_at=token)


def test_health_is_degraded_naming_a_stuck_run_a_dead_lock_and_a_broker_that_lost_its_data(broker):
    # given: a run whose claim is no longer renewed, holding its lock
    stuck, token = claimed(age=300)
    lock_for(stuck, token).acquire()
    TaskRun.objects.filter(id=stuck.id).update(lease_expires_at=timezone.now() - timedelta(seconds=30))
    # when
    report = system_health(worker_timeout=0.2)
    # then (workers and beat are down too in this test: status fail, and the degraded checks are named)
    assert set(report["degraded"]) == {"stuck_runs", "locks"}
    [issue] = report["checks"]["stuck_runs"]["issues"]
    assert stuck.celery_task_id in issue["what"] and issue["since"]
    [lock_issue] = report["checks"]["locks"]["issues"]
    assert KEY in lock_issue["what"] and str(stuck.id) in lock_issue["what"]

    # when: the broker restarts empty with a run waiting in it
    ledger.record_enqueue(
        task_name="platform_noop",
        celery_task_id=str(uuid.uuid4()),
        queue="default",
        args=[],
        kwargs={},
        triggered_by=TriggerKind.COMMAND,
    )
    broker.flushdb()
    report = system_health(worker_timeout=0.2)
    # then
    assert "queued_runs" in report["degraded"]
    assert "lost its data" in report["checks"]["queued_runs"]["issues"][0]["what"]

"""Delivery guarantees with real worker processes: retries and backoff, dead letters and replay, SIGKILL, cancel, locks.

Every test talks to a real `celery worker` subprocess over the test Redis and the test database. The
platform_probe task leaves countable side effects in Redis (`mark`): each attempt's start time, and one
"done" INCR written only when its work completed — so "ran exactly once" is a number we read back.
"""

import importlib
import json
import os
import signal
import time

import pytest
import redis
from django.apps import apps
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import dead_letter_replay, run_cancel, task_enqueue
from tasks_app.tasks import reconcile_task_runs
from tests.celery_procs import child_env, flush_broker, start_beat, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def broker():
    """The test broker's Redis, emptied first so no message or probe mark of an earlier test is seen."""
    flush_broker()
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


@pytest.fixture
def workers(tmp_path):
    """Start workers on demand; every one still running at the end is stopped."""
    started = []

    def start(**kwargs):
        worker = start_worker(tmp_path, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def attempts(broker, mark: str) -> list[float]:
    return [float(value) for value in broker.lrange(f"finops:probe:{mark}:attempts", 0, -1)]


def done(broker, mark: str) -> int:
    return int(broker.get(f"finops:probe:{mark}:done") or 0)


def enqueue_probe(correlation_id: str | None = None, **kwargs) -> TaskRun:
    return task_enqueue(
        task_name="platform_probe", kwargs=kwargs, triggered_by=TriggerKind.COMMAND, correlation_id=correlation_id
    )


def run_in_state(run: TaskRun, *states: str, timeout: float = 30.0) -> TaskRun:
    return wait_for(
        lambda: TaskRun.objects.filter(id=run.id, state__in=states).first(),
        timeout=timeout,
        what=f"run {run.celery_task_id} to be {'/'.join(states)}",
    )


# --- retries, backoff, dead letters, replay ---


def test_transient_failure_is_retried_three_times_with_doubling_backoff_then_dead_lettered(broker, workers):
    # given: the seed's backoff shape (base * 2**n) with the base shortened through the setting
    worker = workers(env=child_env(TASK_RETRY_BACKOFF_BASE="0.5"))
    # when
    run = enqueue_probe(fail_transient=9, mark="retry9", correlation_id="retry-corr")
    failed = run_in_state(run, RunState.FAILURE, RunState.SUCCESS)
    # then: four attempts (the first plus 3 retries), gaps ≈ 0.5, 1, 2 s
    starts = attempts(broker, "retry9")
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert len(starts) == 4, gaps
    for gap, expected in zip(gaps, [0.5, 1.0, 2.0], strict=True):
        assert expected * 0.95 <= gap <= expected + 0.4, gaps
    assert 1.6 <= gaps[1] / gaps[0] <= 2.4 and 1.6 <= gaps[2] / gaps[1] <= 2.4, gaps
    for retry, countdown in ((1, 0.5), (2, 1.0), (3, 2.0)):
        assert f"retry {retry} in {countdown}s" in worker.log
    assert failed.state == RunState.FAILURE
    assert failed.retries == 3
    assert failed.error_type == "TransientError"
    assert "gave up after 3 retries" in failed.error
    letter = DeadLetter.objects.get(run=failed)
    assert letter.retries == 3 and letter.kwargs == {"fail_transient": 9, "mark": "retry9"}
    assert done(broker, "retry9") == 0


def test_transient_failure_that_clears_succeeds_on_the_third_attempt(broker, workers):
    # given
    workers(env=child_env(TASK_RETRY_BACKOFF_BASE="0.2"))
    # when
    run = enqueue_probe(fail_transient=2, mark="retry2")
    finished = run_in_state(run, RunState.SUCCESS, RunState.FAILURE)
    # then
    assert finished.state == RunState.SUCCESS
    assert finished.retries == 2
    assert finished.result["attempts"] == 3
    assert finished.error == ""
    assert len(attempts(broker, "retry2")) == 3
    assert done(broker, "retry2") == 1
    assert not DeadLetter.objects.exists()


def test_permanent_failure_is_not_retried_and_its_dead_letter_replays_once_the_fault_is_fixed(broker, workers):
    # given: a fault an operator can fix (think: revoked credentials), present while the flag is set
    workers(env=child_env(TASK_RETRY_BACKOFF_BASE="0.2"))
    broker.set("finops:probe:flag:credentials-revoked", "1")
    # when
    run = enqueue_probe(fail_while_flag="credentials-revoked", mark="replay", correlation_id="replay-corr")
    failed = run_in_state(run, RunState.FAILURE, RunState.SUCCESS)
    time.sleep(1.0)  # a retry, had one been scheduled, would have run by now
    # then: failed at once, one attempt, dead-lettered with the message
    assert failed.state == RunState.FAILURE
    assert failed.retries == 0
    assert failed.error_type == "PermanentError"
    assert "blocked while flag credentials-revoked is set" in failed.error
    assert len(attempts(broker, "replay")) == 1
    letter = DeadLetter.objects.get(run=failed)
    assert letter.retries == 0

    # when: the fault is fixed and the dead letter replayed
    broker.delete("finops:probe:flag:credentials-revoked")
    replay = dead_letter_replay(dead_letter_id=letter.id)
    replayed = run_in_state(replay, RunState.SUCCESS, RunState.FAILURE)
    # then
    assert replayed.state == RunState.SUCCESS
    assert replayed.id != failed.id
    assert replayed.triggered_by == TriggerKind.REPLAY
    assert replayed.kwargs == failed.kwargs
    assert replayed.correlation_id == "replay-corr"
    letter.refresh_from_db()
    assert letter.replay_run_id == replayed.id and letter.replayed_at is not None
    assert done(broker, "replay") == 1
    assert DeadLetter.objects.count() == 1


# --- SIGKILL: the ledger, not the broker, guarantees delivery ---


def test_worker_killed_mid_task_is_redelivered_by_the_reconciler_and_completes_once(broker, workers):
    # given: a run in progress on a worker whose claims last 2 s unless renewed
    first = workers(env=child_env(TASK_CLAIM_LEASE="2", TASK_CLAIM_RENEW="0.5"))
    run = enqueue_probe(sleep=5, mark="sigkill")
    started = run_in_state(run, RunState.STARTED)
    # when: the whole worker (main process and pool) dies without a chance to ack, requeue or clean up
    first.kill()
    assert broker.hlen("unacked") == 1  # the killed worker's message: the broker alone would hold it ~1 h
    second = workers()
    time.sleep(2.5)  # past the claim's lease: nobody renews it any more
    reconcile_task_runs.delay()
    # then
    finished = run_in_state(run, RunState.SUCCESS, RunState.FAILURE, timeout=40)
    assert finished.state == RunState.SUCCESS
    assert finished.redeliveries >= 1
    assert finished.worker.split("@")[0] != started.worker.split("@")[0]
    assert "re-enqueuing lost run" in second.log

    # when: the broker redelivers the original message too (a worker starting with a short visibility
    # timeout restores unacked messages older than it)
    third = workers(env=child_env(CELERY_VISIBILITY_TIMEOUT="5"))
    # then: that duplicate delivery is turned away by the ledger, not executed again
    wait_for(
        lambda: "dropping delivery" in second.log + third.log, timeout=30, what="the broker's redelivery to be dropped"
    )
    wait_for(lambda: broker.hlen("unacked") == 0, what="the duplicate to be acknowledged")
    assert done(broker, "sigkill") == 1
    assert len(attempts(broker, "sigkill")) == 2  # the killed attempt and the one that completed
    assert TaskRun.objects.filter(celery_task_id=run.celery_task_id).count() == 1


def test_worker_killed_mid_task_is_recovered_by_beats_reconciler_schedule(broker, workers, tmp_path):
    # given: the seed's schedules, with the ledger reconciler's schedule tightened to every 2 s (an admin edit)
    importlib.import_module("tasks_app.migrations.0002_default_schedules").create(apps, None)
    reconciler = PeriodicTask.objects.get(task="reconcile_task_runs")
    reconciler.interval, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    reconciler.save()
    first = workers(env=child_env(TASK_CLAIM_LEASE="2", TASK_CLAIM_RENEW="0.5"))
    run = enqueue_probe(sleep=4, mark="beat-recovers")
    run_in_state(run, RunState.STARTED)
    # when: the worker dies; a new worker and beat come up, and nobody calls the reconciler by hand
    first.kill()
    second = workers()
    beat = start_beat(tmp_path)
    try:
        finished = run_in_state(run, RunState.SUCCESS, RunState.FAILURE, timeout=45)
    finally:
        beat.stop()
    # then
    assert finished.state == RunState.SUCCESS
    assert finished.redeliveries == 1
    assert "reconcile_task_runs" in beat.log
    assert "re-enqueuing lost run" in second.log
    assert done(broker, "beat-recovers") == 1


def test_pool_child_killed_mid_task_is_requeued_by_its_worker_and_completes_once(broker, workers):
    # given: a run in progress; TaskRun.worker names the pool child executing it
    worker = workers(concurrency=1)
    run = enqueue_probe(sleep=3, mark="childkill")
    started = run_in_state(run, RunState.STARTED)
    child_pid = int(started.worker.rpartition("/")[2])
    assert child_pid != worker.proc.pid
    # when: only the child dies; the parent survives and rejects the message back (reject_on_worker_lost)
    os.kill(child_pid, signal.SIGKILL)
    # then: the new child reclaims the run held by the dead process and finishes it, once
    finished = run_in_state(run, RunState.SUCCESS, RunState.FAILURE, timeout=40)
    assert finished.state == RunState.SUCCESS
    assert finished.redeliveries == 1
    assert int(finished.worker.rpartition("/")[2]) != child_pid
    assert worker.proc.poll() is None
    assert done(broker, "childkill") == 1
    assert len(attempts(broker, "childkill")) == 2
    assert "WorkerLostError" in worker.log or "exited prematurely" in worker.log


def test_reconciler_leaves_a_run_on_a_live_worker_alone(broker, workers):
    # given: a run in progress on a worker whose claims last 2 s unless renewed (every 0.5 s)
    workers(env=child_env(TASK_CLAIM_LEASE="2", TASK_CLAIM_RENEW="0.5"))
    run = enqueue_probe(sleep=5, mark="alive")
    run_in_state(run, RunState.STARTED)
    # when: the reconciler runs after the first lease would have run out
    from tasks_app.services.runs import runs_reconcile

    time.sleep(3)
    outcome = runs_reconcile(now=timezone.now())
    # then
    assert outcome.requeued == 0 and outcome.failed == 0
    finished = run_in_state(run, RunState.SUCCESS, RunState.FAILURE)
    assert finished.state == RunState.SUCCESS and finished.redeliveries == 0
    assert done(broker, "alive") == 1


# --- cancel ---


def test_cancelled_queued_run_never_runs(broker, workers):
    # given: a run whose message waits in the broker, no worker yet
    run = enqueue_probe(mark="cancel-queued")
    assert broker.llen("default") == 1
    # when: cancelled, then a worker comes up (it never saw the revoke broadcast)
    outcome = run_cancel(celery_task_id=run.celery_task_id)
    worker = workers()
    # then: the worker consumes the message and the ledger makes it drop it
    wait_for(lambda: "dropping delivery" in worker.log, what="the cancelled delivery to be dropped")
    wait_for(lambda: broker.llen("default") == 0, what="the message to be consumed")
    assert outcome.cancelled
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED
    assert run.started_at is None
    assert run.error == "cancelled before it started"
    assert attempts(broker, "cancel-queued") == []
    assert done(broker, "cancel-queued") == 0
    assert not DeadLetter.objects.exists()


def test_cancelled_running_run_is_terminated(broker, workers):
    # given: a run in progress
    worker = workers()
    run = enqueue_probe(sleep=6, mark="cancel-running")
    run_in_state(run, RunState.STARTED)
    # when
    outcome = run_cancel(celery_task_id=run.celery_task_id)
    # then: the pool child is terminated; the run never completes and is not retried or dead-lettered
    wait_for(lambda: "Terminating" in worker.log or "revoked" in worker.log, what="the worker to terminate it")
    assert outcome.cancelled
    time.sleep(7)  # past the time the probe would have finished
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED
    assert run.error == "cancelled while running"
    assert done(broker, "cancel-running") == 0
    assert len(attempts(broker, "cancel-running")) == 1
    assert not DeadLetter.objects.exists()
    # and the worker is still serving
    after = enqueue_probe(mark="after-cancel")
    assert run_in_state(after, RunState.SUCCESS, RunState.FAILURE).state == RunState.SUCCESS


# --- per-account lock ---


def test_runs_for_the_same_account_never_overlap(broker, workers):
    # given: two worker processes free, and a run of account 42 already working (its lock held for 4 s; the retries
    # below come 1, 2 and 4 s apart)
    worker = workers(concurrency=2, env=child_env(TASK_RETRY_BACKOFF_BASE="1.0"))
    first = enqueue_probe(account_id=42, sleep=4, mark="lock")
    run_in_state(first, RunState.STARTED, timeout=40)
    # when: a second run of the same account comes while the first works (both enqueued at once could start one
    # after the other on a loaded machine, and then never meet: seen in CI)
    second = enqueue_probe(account_id=42, sleep=0.5, mark="lock")
    finished = [run_in_state(run, RunState.SUCCESS, RunState.FAILURE, timeout=60) for run in (first, second)]
    # then: both completed, the second after waiting for the lock, and their work never overlapped
    assert [run.state for run in finished] == [RunState.SUCCESS, RunState.SUCCESS]
    assert finished[1].retries >= 1
    assert "another run holds the lock platform_probe:account_id:42" in worker.log
    spans = sorted(json.loads(span) for span in broker.lrange("finops:probe:lock:spans", 0, -1))
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0], spans
    assert done(broker, "lock") == 2


def test_runs_for_different_accounts_run_side_by_side(broker, workers):
    # given
    workers(concurrency=2, env=child_env(TASK_RETRY_BACKOFF_BASE="1.0"))
    # when
    runs = [enqueue_probe(account_id=account, sleep=1.5, mark="nolock") for account in (1, 2)]
    finished = [run_in_state(run, RunState.SUCCESS, RunState.FAILURE, timeout=40) for run in runs]
    # then: the lock is per account, so they overlapped and neither retried
    assert [run.retries for run in finished] == [0, 0]
    spans = sorted(json.loads(span) for span in broker.lrange("finops:probe:nolock:spans", 0, -1))
    assert spans[0][1] > spans[1][0], spans


def test_a_run_waits_out_a_live_holder_without_spending_its_retries_on_the_wait(broker, workers):
    # given: one retry for errors (TASK_MAX_RETRIES=1), looks at a held lock 0.3, 0.6, 1.2 ... s apart, and a run of
    # account 43 holding the lock for 6 s: longer than one retry's wait (before: FAILURE "gave up after 1 retries:
    # another run holds the lock", and a sync overlapping a 30-minute one failed after 7 minutes)
    workers(concurrency=2, env=child_env(TASK_RETRY_BACKOFF_BASE="0.3", TASK_MAX_RETRIES="1"))
    holder = enqueue_probe(account_id=43, sleep=6, mark="holder")
    run_in_state(holder, RunState.STARTED, timeout=40)
    # when: two more runs of account 43 come, one that works and one whose work fails transiently every time
    waiter = enqueue_probe(account_id=43, mark="waiter")
    failing = enqueue_probe(account_id=43, fail_transient=99, mark="failing")
    finished = [run_in_state(run, RunState.SUCCESS, RunState.FAILURE, timeout=90) for run in (holder, waiter, failing)]
    # then: the waiter waited (more retries than TASK_MAX_RETRIES, all spent on the lock) and succeeded after the
    # holder's work; the failing one also got the lock, and its errors still had their one retry: two attempts of
    # its work, then FAILURE for its own error, not for the lock
    assert [run.state for run in finished] == [RunState.SUCCESS, RunState.SUCCESS, RunState.FAILURE], [
        (run.state, run.error) for run in finished
    ]
    assert finished[1].retries > 1
    (held,) = [json.loads(span) for span in broker.lrange("finops:probe:holder:spans", 0, -1)]
    (waited,) = [json.loads(span) for span in broker.lrange("finops:probe:waiter:spans", 0, -1)]
    assert held[1] <= waited[0], (held, waited)
    assert len(attempts(broker, "failing")) == 2
    assert min(attempts(broker, "failing")) >= held[1]
    assert finished[2].error.startswith("gave up after 1 retries: probe transient failure"), finished[2].error
    assert finished[2].retries > 1  # its lock waits besides
    assert DeadLetter.objects.filter(run_id=finished[2].id).exists()
    assert not DeadLetter.objects.filter(run_id__in=[holder.id, waiter.id]).exists()


def test_a_held_account_lock_is_waited_for_up_to_task_lock_wait_and_never_overlapped(broker, workers):
    # given: another run holds sync_provider_cost_data's lock for account 7 (the key the platform uses), longer than
    # the run will wait (TASK_LOCK_WAIT=3 s)
    worker = workers(env=child_env(TASK_RETRY_BACKOFF_BASE="0.3", TASK_MAX_RETRIES="1", TASK_LOCK_WAIT="3"))
    broker.set("finops:lock:sync_provider_cost_data:account_id:7", "held-by-another-run", ex=60)
    # when
    run = task_enqueue(task_name="sync_provider_cost_data", kwargs={"account_id": 7}, triggered_by=TriggerKind.COMMAND)
    failed = run_in_state(run, RunState.FAILURE, RunState.SUCCESS)
    # then: the contention is waited for (looked at again and again, past TASK_MAX_RETRIES), then the run fails
    # naming the lock and the wait, and the holder's lock was not touched
    assert failed.retries >= 3
    assert failed.error_type == "LockHeld"
    assert failed.error.startswith("gave up after waiting "), failed.error
    assert "(TASK_LOCK_WAIT) for the lock: another run holds the lock sync_provider_cost_data:account_id:7" in (
        failed.error
    )
    assert worker.log.count("waiting for its lock") >= 3
    assert broker.get("finops:lock:sync_provider_cost_data:account_id:7") == b"held-by-another-run"

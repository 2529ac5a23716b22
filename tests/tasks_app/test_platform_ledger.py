"""The ledger's claim: at-least-once delivery, but a run executes once; and what FinOpsTask records around it.

Deliveries are simulated in-process by pushing the request a worker would build (same __call__ path as a
worker's pool process); the real worker path is covered in tests/integration/test_reliability.py.
"""

import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from finops.errors import PermanentError
from tasks_app import ledger
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import run_cancel, task_enqueue
from tasks_app.tasks import platform_noop, platform_probe
from tests.celery_procs import flush_broker

pytestmark = pytest.mark.django_db

HOST = "unit@host"


@pytest.fixture(autouse=True)
def empty_broker():
    flush_broker()


def deliver(task, task_id: str, *, hostname: str = HOST, retries: int = 0, headers: dict | None = None, **kwargs):
    """Run `task` as a worker would run one delivery of message `task_id`."""
    task.push_request(
        id=task_id,
        retries=retries,
        delivery_info={"routing_key": "default"},
        hostname=hostname,
        called_directly=False,
        is_eager=False,
        headers=headers or {},
        x_correlation_id=(headers or {}).get("x_correlation_id"),
    )
    try:
        return task(**kwargs)
    finally:
        task.pop_request()


def enqueued(task_name: str = "platform_noop", **kwargs) -> TaskRun:
    return ledger.record_enqueue(
        task_name=task_name,
        celery_task_id=str(uuid.uuid4()),
        queue="default",
        args=[],
        kwargs=kwargs,
        triggered_by=TriggerKind.COMMAND,
        correlation_id="ledger-corr",
    )


def claim(run: TaskRun, *, hostname: str = HOST, now=None):
    return ledger.claim(
        celery_task_id=run.celery_task_id,
        task_name=run.task_name,
        queue=run.queue,
        args=[],
        kwargs=run.kwargs,
        correlation_id=run.correlation_id,
        retries=0,
        hostname=hostname,
        now=now or timezone.now(),
    )


def test_record_enqueue_writes_a_queued_row_that_reads_back_equal():
    # when
    run = enqueued(value=3)
    # then
    stored = TaskRun.objects.get(id=run.id)
    assert stored.state == RunState.QUEUED
    assert stored.kwargs == {"value": 3}
    assert stored.correlation_id == "ledger-corr"
    assert stored.enqueued_at == run.enqueued_at
    assert stored.worker == "" and stored.retries == 0 and stored.redeliveries == 0
    # and the returned instance is a saved model instance (updates work on it)
    run.trigger_detail = "x"
    run.save(update_fields=["trigger_detail"])
    assert TaskRun.objects.get(id=run.id).trigger_detail == "x"


def test_claim_starts_a_queued_run_once():
    # given
    run = enqueued()
    # when
    first = claim(run)
    second = claim(run, hostname="other@host")
    # then
    assert first == run.id
    assert second is None
    run.refresh_from_db()
    assert run.state == RunState.STARTED
    assert run.worker == f"{HOST}/{os.getpid()}"
    assert run.lease_expires_at > run.started_at


@pytest.mark.parametrize("state", [RunState.SUCCESS, RunState.FAILURE, RunState.CANCELLED])
def test_claim_refuses_a_finished_or_cancelled_run(state):
    # given
    run = enqueued()
    TaskRun.objects.filter(id=run.id).update(state=state)
    # when / then
    assert claim(run) is None
    assert TaskRun.objects.get(id=run.id).state == state


def test_claim_records_a_run_that_has_no_ledger_row_yet():
    # given: a message whose enqueue could not be recorded
    run = TaskRun(task_name="platform_noop", celery_task_id=str(uuid.uuid4()), queue="default", kwargs={})
    # when
    run_id = claim(run)
    # then
    stored = TaskRun.objects.get(celery_task_id=run.celery_task_id)
    assert stored.id == run_id and stored.state == RunState.STARTED


def test_claim_takes_over_a_started_run_past_its_lease():
    # given: held by a worker elsewhere whose lease ran out
    run = enqueued()
    claim(run, hostname="gone@elsewhere")
    TaskRun.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    # when / then
    assert claim(run) == run.id
    assert TaskRun.objects.get(id=run.id).worker.startswith(HOST)


def test_claim_takes_over_a_run_held_by_a_dead_process_of_this_worker():
    # given: held by a pool process of this worker that has died (its pid no longer exists)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = enqueued()
    claim(run)
    TaskRun.objects.filter(id=run.id).update(worker=f"{HOST}/{dead.pid}")
    # when
    run_id = claim(run)
    # then
    run.refresh_from_db()
    assert run_id == run.id
    assert run.redeliveries == 1
    assert run.worker == f"{HOST}/{os.getpid()}"


def test_claim_leaves_a_run_held_by_a_live_process_of_this_worker():
    # given: held by a live process (this one) of the same worker
    run = enqueued()
    claim(run)
    # when / then: a duplicate delivery while it runs is dropped
    assert claim(run) is None
    assert TaskRun.objects.get(id=run.id).redeliveries == 0


@pytest.mark.django_db(transaction=True)  # __call__ closes stale connections, as a worker does
def test_delivery_runs_the_task_and_records_success():
    # given
    run = enqueued(value=9)
    # when
    result = deliver(platform_noop, run.celery_task_id, value=9, headers={"x_correlation_id": "ledger-corr"})
    # then
    run.refresh_from_db()
    assert result == 9
    assert run.state == RunState.SUCCESS and run.result == 9
    assert run.duration_ms is not None and run.lease_expires_at is None
    # and a duplicate delivery afterwards is dropped, not executed
    assert deliver(platform_noop, run.celery_task_id, value=9) == {"skipped": "duplicate delivery"}


@pytest.mark.django_db(transaction=True)  # __call__ closes stale connections, as a worker does
def test_permanent_failure_is_recorded_and_dead_lettered():
    # given
    run = enqueued("platform_probe", fail_permanent=True)
    # when
    with pytest.raises(PermanentError):
        deliver(platform_probe, run.celery_task_id, fail_permanent=True)
    # then
    run.refresh_from_db()
    assert run.state == RunState.FAILURE and run.error == "probe asked to fail permanently"
    assert DeadLetter.objects.get(run=run).error == "probe asked to fail permanently"


def test_a_run_cancelled_while_running_is_not_dead_lettered_when_it_then_fails():
    # given: a run in progress, then cancelled (the worker never got the terminate)
    run = enqueued("platform_probe")
    run_id = claim(run)
    run_cancel(celery_task_id=run.celery_task_id)
    # when: its body fails afterwards
    platform_probe._fail(run_id, PermanentError("late failure"), "late failure")
    # then: it stays cancelled, with no dead letter to replay and no alert
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED
    assert not DeadLetter.objects.exists()


def test_finish_only_records_a_started_run():
    # given
    run = enqueued()
    # when / then
    assert ledger.finish(run_id=run.id, state=RunState.SUCCESS, now=timezone.now()) is False
    claim(run)
    assert ledger.finish(run_id=run.id, state=RunState.SUCCESS, now=timezone.now(), result={"n": 1}) is True
    assert TaskRun.objects.get(id=run.id).result == {"n": 1}


def test_called_directly_the_task_runs_without_the_ledger():
    # when
    value = platform_noop(value=4)
    # then
    assert value == 4
    assert not TaskRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_task_enqueue_refuses_an_unknown_task():
    from tasks_app.services.runs import UnknownTask

    with pytest.raises(UnknownTask):
        task_enqueue(task_name="bare_noop", triggered_by=TriggerKind.COMMAND)
    assert not TaskRun.objects.exists()

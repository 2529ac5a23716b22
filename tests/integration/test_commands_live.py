"""The commands against a real worker: run_task --wait, monitor_tasks workers/queues/active, cancel before start."""

import io
import time

import pytest
from django.core.management import CommandError, call_command

from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import flush_broker, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def run_command(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_run_task_wait_prints_success(celery_worker_proc):
    # when
    out = run_command("run_task", "monitor_budget", "--wait", "--timeout", "60")
    # then
    run = TaskRun.objects.get(task_name="monitor_budget")
    assert f"task id: {run.celery_task_id}" in out
    assert "outcome: SUCCESS" in out
    assert run.state == RunState.SUCCESS
    assert (run.triggered_by, run.trigger_detail) == (TriggerKind.COMMAND, "run_task")
    assert run.worker.startswith("test-")


def test_monitor_workers_lists_the_running_worker(celery_worker_proc):
    # when
    out = run_command("monitor_tasks", "workers")
    # then
    assert "1 worker(s) answering" in out
    worker_line = next(line for line in out.splitlines() if line.endswith(": pong"))
    assert worker_line.startswith("test-")
    assert "concurrency      2" in out
    assert "prefork" in out
    for queue in ("cost_sync", "resource_discovery", "monitoring", "analysis", "maintenance", "default"):
        assert queue in out


def test_monitor_queues_counts_what_no_worker_consumes(tmp_path):
    # given a worker on "monitoring" only, and work for "monitoring" and "analysis"
    flush_broker()
    worker = start_worker(tmp_path, queues="monitoring", concurrency=1)
    try:
        consumed = task_enqueue(task_name="monitor_budget", triggered_by=TriggerKind.COMMAND)
        waiting = task_enqueue(task_name="detect_cost_anomalies", triggered_by=TriggerKind.COMMAND)
        wait_for(lambda: TaskRun.objects.filter(id=consumed.id, state=RunState.SUCCESS).exists(), what="consumed")
        # when
        out = run_command("monitor_tasks", "queues")
    finally:
        worker.stop()
    # then
    rows = [line.split() for line in out.splitlines()]
    counts = {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}
    assert counts["analysis"] == 1
    assert counts["monitoring"] == 0
    assert counts["(total)"] == 1
    assert TaskRun.objects.get(id=waiting.id).state == RunState.QUEUED
    flush_broker()


def test_cancelled_queued_run_never_runs(tmp_path):
    # given a single-slot worker kept busy, so the next run waits on the broker
    flush_broker()
    worker = start_worker(tmp_path, concurrency=1)
    try:
        busy = task_enqueue(task_name="platform_probe", kwargs={"sleep": 3}, triggered_by=TriggerKind.COMMAND)
        wait_for(lambda: TaskRun.objects.filter(id=busy.id, state=RunState.STARTED).exists(), what="busy run")
        queued = task_enqueue(task_name="monitor_budget", triggered_by=TriggerKind.COMMAND)
        active = run_command("monitor_tasks", "active")
        # when
        out = run_command("monitor_tasks", "cancel", queued.celery_task_id)
        wait_for(lambda: TaskRun.objects.filter(id=busy.id, state=RunState.SUCCESS).exists(), what="busy run done")
        time.sleep(3)  # time enough for the worker to receive the cancelled message and drop it
        log = worker.log
    finally:
        worker.stop()
    # then
    assert queued.celery_task_id in active and busy.celery_task_id in active
    assert "cancelled" in out
    run = TaskRun.objects.get(id=queued.id)
    assert run.state == RunState.CANCELLED
    assert run.started_at is None
    assert f"Task monitor_budget[{queued.celery_task_id}] succeeded" not in log
    flush_broker()


def test_monitor_health_sees_the_worker(celery_worker_proc):
    # given a worker but no beat
    out = io.StringIO()
    # when
    with pytest.raises(CommandError, match="unhealthy: beat"):
        call_command("monitor_tasks", "health", stdout=out)
    # then
    assert any(line.split()[:2] == ["ok", "workers"] for line in out.getvalue().splitlines())

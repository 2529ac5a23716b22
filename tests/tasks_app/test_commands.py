"""The management commands against real data, a real broker and (for watch's Ctrl-C) a real process."""

import io
import json
import signal
import subprocess
import sys
import time

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.core.management import CommandError, call_command

from tasks_app import ledger
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tests.celery_procs import ROOT, child_env, flush_broker
from tests.factories import CloudAccountFactory

pytestmark = pytest.mark.django_db


def run_command(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def make_run(task_name="monitor_budget", state=RunState.QUEUED, **fields) -> TaskRun:
    run = ledger.record_enqueue(
        task_name=task_name,
        celery_task_id=f"cmd-{TaskRun.objects.count() + 1}-{task_name}",
        queue=fields.pop("queue", "monitoring"),
        args=[],
        kwargs=fields.pop("kwargs", {}),
        triggered_by=TriggerKind.API,
        correlation_id="corr-cmd",
    )
    TaskRun.objects.filter(id=run.id).update(state=state, **fields)
    run.refresh_from_db()
    return run


def queue_messages(queue: str) -> list[dict]:
    return [json.loads(m) for m in redis.Redis.from_url(settings.CELERY_BROKER_URL).lrange(queue, 0, -1)]


# --- monitor_tasks ---


def test_active_lists_ledger_runs_and_says_no_worker_answered():
    # given
    queued = make_run("monitor_budget")
    started = make_run("detect_cost_anomalies", RunState.STARTED, queue="analysis", worker="w1@host/123")
    make_run("cleanup_old_data", RunState.SUCCESS)
    # when
    out = run_command("monitor_tasks", "active")
    # then
    assert "Active runs in the ledger: 2" in out
    assert queued.celery_task_id in out and started.celery_task_id in out
    assert "w1@host/123" in out
    assert "cleanup_old_data" not in out
    assert "none answered" in out


def test_workers_without_any_worker_fails():
    with pytest.raises(CommandError, match="no worker answered"):
        run_command("monitor_tasks", "workers")


def test_status_shows_ledger_row_and_result():
    # given
    run = make_run(
        "sync_provider_cost_data", RunState.SUCCESS, queue="cost_sync", result={"rows": 1000}, duration_ms=1500
    )
    # when
    out = run_command("monitor_tasks", "status", run.celery_task_id)
    # then
    assert f"Task {run.celery_task_id}" in out
    assert "SUCCESS" in out
    assert "sync_provider_cost_data" in out
    assert '"rows": 1000' in out
    assert "1.50s" in out
    assert "corr-cmd" in out


def test_status_of_unknown_id_fails():
    with pytest.raises(CommandError, match="unknown task id"):
        run_command("monitor_tasks", "status", "no-such-task")


def test_cancel_marks_queued_run_cancelled():
    # given
    run = make_run()
    # when
    out = run_command("monitor_tasks", "cancel", run.celery_task_id)
    # then
    assert "cancelled" in out
    assert TaskRun.objects.get(id=run.id).state == RunState.CANCELLED


def test_cancel_of_finished_run_fails_and_changes_nothing():
    # given
    run = make_run(state=RunState.SUCCESS)
    # when / then
    with pytest.raises(CommandError, match="already success"):
        run_command("monitor_tasks", "cancel", run.celery_task_id)
    assert TaskRun.objects.get(id=run.id).state == RunState.SUCCESS


def test_queues_counts_messages_on_the_broker_including_priority_lists():
    # given two plain messages and one with a priority (kombu puts it on the "analysis\x06\x163" list)
    flush_broker()
    current_app.send_task("monitor_budget", queue="monitoring")
    current_app.send_task("monitor_budget", queue="monitoring")
    current_app.send_task("detect_cost_anomalies", queue="analysis", priority=5)
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert client.llen("analysis\x06\x163") == 1  # the layout the command relies on
    # when
    out = run_command("monitor_tasks", "queues")
    # then
    lines = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line and line.split()[0] in settings.TASK_QUEUES
    }
    assert lines == {
        "default": "0",
        "cost_sync": "0",
        "resource_discovery": "0",
        "monitoring": "2",
        "analysis": "1",
        "maintenance": "0",
    }
    assert "(total)             3" in out
    flush_broker()


def test_failed_lists_failures_and_dead_letters_with_limit():
    # given
    first = make_run(
        "sync_provider_cost_data", RunState.FAILURE, error="bad file: missing BilledCost", error_type="PermanentError"
    )
    second = make_run("monitor_budget", RunState.FAILURE, error="redis timeout", error_type="TransientError")
    DeadLetter.objects.create(run=first, task_name=first.task_name, error=first.error, retries=0)
    # when
    everything = run_command("monitor_tasks", "failed")
    limited = run_command("monitor_tasks", "failed", "--limit", "1")
    # then
    assert first.celery_task_id in everything and second.celery_task_id in everything
    assert "bad file: missing BilledCost" in everything
    assert "Dead letters" in everything
    assert limited.split("Dead letters")[0].count("cmd-") == 1


def test_watch_reprints_for_the_given_iterations():
    # given
    run = make_run()
    # when
    out = run_command("monitor_tasks", "watch", "--interval", "0.01", "--iterations", "2")
    # then
    assert out.count("Task system at") == 2
    assert out.count(run.celery_task_id) == 2
    assert "Broker queues" in out


def test_watch_stops_cleanly_on_ctrl_c():
    # given a real process, as an operator runs it
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "monitor_tasks", "watch", "--interval", "0.2"],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        first = ""
        while "Ctrl-C to stop" not in first and time.monotonic() < deadline:
            first += proc.stdout.readline()
        # when
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # then
    assert proc.returncode == 0, err
    assert "Task system at" in first
    assert out.rstrip().endswith("stopped")
    assert "Traceback" not in err


# --- run_task ---


def test_run_task_enqueues_through_the_ledger(django_capture_on_commit_callbacks):
    # given
    flush_broker()
    account = CloudAccountFactory(name="prod")
    # when
    with django_capture_on_commit_callbacks(execute=True):
        out = run_command("run_task", "sync_provider_cost_data", "--account", "prod", "--billing-period", "2024-09")
    # then
    run = TaskRun.objects.get()
    assert f"task id: {run.celery_task_id}" in out
    assert (run.triggered_by, run.trigger_detail, run.state, run.queue) == (
        TriggerKind.COMMAND,
        "run_task",
        RunState.QUEUED,
        "cost_sync",
    )
    assert run.kwargs == {"account_id": account.id, "billing_period": "2024-09"}
    assert [m["headers"]["id"] for m in queue_messages("cost_sync")] == [run.celery_task_id]
    flush_broker()


def test_run_task_cleanup_dry_run(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        run_command("run_task", "cleanup_old_data", "--dry-run")
    assert TaskRun.objects.get().kwargs == {"dry_run": True}


def test_run_task_cleanup_of_some_classes(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        run_command("run_task", "cleanup_old_data", "--dry-run", "--classes", "cost_lines, task_runs")
    assert TaskRun.objects.get().kwargs == {"dry_run": True, "classes": ["cost_lines", "task_runs"]}


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_task"], "invalid choice"),
        (["monitor_budget", "--account", "nope"], "no account named 'nope'"),
        (["cleanup_old_data", "--account", "prod"], "does not take --account"),
        (["sync_provider_cost_data", "--billing-period", "2024-13"], "must be YYYY-MM"),
        (["monitor_budget", "--billing-period", "2024-09"], "sync_provider_cost_data only"),
        (["monitor_budget", "--dry-run"], "cleanup_old_data only"),
        (["cleanup_old_data", "--classes", "cost_lines,logs"], "unknown data class logs"),
        (["monitor_budget", "--classes", "cost_lines"], "cleanup_old_data only"),
    ],
)
def test_run_task_refuses_bad_input(args, message):
    CloudAccountFactory(name="prod")
    with pytest.raises(CommandError, match=message):
        run_command("run_task", *args)
    assert not TaskRun.objects.exists()


def test_run_task_wait_times_out_without_a_worker(django_capture_on_commit_callbacks):
    # when
    with pytest.raises(CommandError, match="timed out") as excinfo:
        run_command("run_task", "monitor_budget", "--wait", "--timeout", "0.3")
    # then
    assert excinfo.value.returncode == 2


def test_health_names_what_is_down():
    # given no worker and no beat running on the test broker
    flush_broker()
    out = io.StringIO()
    # when
    with pytest.raises(CommandError, match="unhealthy: workers, beat"):
        call_command("monitor_tasks", "health", stdout=out)
    # then
    lines = out.getvalue().splitlines()
    assert any(line.split()[:2] == ["ok", "database"] for line in lines)
    assert any(line.split()[:2] == ["ok", "broker"] for line in lines)
    assert any(line.split()[:2] == ["FAIL", "workers"] and "no worker answered" in line for line in lines)

"""The task API against a real worker and beat: health, worker stats, active tasks, cancel running and queued."""

import time

import pytest
from celery import current_app
from django.conf import settings

from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import flush_broker, start_worker, wait_for
from tests.factories import CloudAccountFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def health(client):
    response = client.get("/api/v1/tasks/health")
    return response.status_code, response.json()


def test_health_is_ok_with_worker_and_beat(platform_client, celery_worker_proc, celery_beat_proc):
    # when: beat has ticked at least once (each check's details: a platform admin's view)
    code, body = wait_for(
        lambda: (r := health(platform_client))[1]["status"] == "ok" and r, timeout=30, what="healthy system"
    )
    # then
    assert code == 200
    assert body["failing"] == [] and body["degraded"] == []
    assert set(body["checks"]) == {
        "database",
        "broker",
        "result_backend",
        "workers",
        "beat",
        "queued_runs",
        "stuck_runs",
        "locks",
    }
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["workers"]["count"] == 1
    assert body["checks"]["beat"]["age_s"] < settings.BEAT_HEARTBEAT_MAX_AGE


def test_health_names_beat_once_it_has_been_stopped_too_long(
    platform_client, celery_worker_proc, celery_beat_proc, settings
):
    # given
    settings.BEAT_HEARTBEAT_MAX_AGE = 2
    wait_for(lambda: health(platform_client)[0] == 200, timeout=30, what="healthy system")
    # when
    celery_beat_proc.stop()
    time.sleep(settings.BEAT_HEARTBEAT_MAX_AGE + 1.5)
    code, body = health(platform_client)
    # then
    assert code == 503
    assert body["failing"] == ["beat"]
    assert "beat is not running" in body["checks"]["beat"]["error"]


def test_workers_stats_lists_the_worker(platform_client, celery_worker_proc):
    # given: one task processed, so the totals are not trivially empty
    run = task_enqueue(task_name="platform_noop", triggered_by=TriggerKind.COMMAND, correlation_id="live-stats")
    wait_for(lambda: TaskRun.objects.filter(id=run.id, state=RunState.SUCCESS).exists(), what="noop to finish")
    # when
    response = platform_client.get("/api/v1/tasks/workers/stats")
    # then
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    worker = body["workers"][0]
    assert worker["name"].startswith("test-")
    assert worker["status"] == "online"
    assert worker["concurrency"] == 2
    assert worker["queues"] == sorted(settings.TASK_QUEUES)
    assert worker["processed_by_task"].get("platform_noop", 0) >= 1
    assert worker["processed"] >= 1


def test_running_task_shows_in_active_and_is_cancelled(
    viewer_client, operator_client, platform_client, celery_worker_proc
):
    # given: a run of an account of the team "Default" (whose viewer and operator the clients are)
    run = task_enqueue(
        task_name="platform_probe",
        kwargs={"sleep": 30, "account_id": CloudAccountFactory().id},
        triggered_by=TriggerKind.COMMAND,
        correlation_id="live-cancel",
    )
    wait_for(lambda: TaskRun.objects.filter(id=run.id, state=RunState.STARTED).exists(), what="probe to start")
    # when: the worker's heartbeat snapshot (every 2 s) shows it (what the workers hold, hosts and arguments of
    # every team: a platform admin's view)
    active = wait_for(
        lambda: (body := platform_client.get("/api/v1/tasks/active").json())["worker_tasks"] and body,
        timeout=10,
        what="the run in the worker's snapshot",
    )
    team_view = viewer_client.get("/api/v1/tasks/active").json()
    cancel = operator_client.delete(f"/api/v1/tasks/cancel/{run.celery_task_id}")
    # then
    assert [r["task_id"] for r in active["runs"]] == [run.celery_task_id]
    assert active["runs"][0]["state"] == "STARTED"
    seen = [t for t in active["worker_tasks"] if t["task_id"] == run.celery_task_id]
    assert [(t["kind"], t["name"], t["run_id"]) for t in seen] == [("active", "platform_probe", str(run.id))]
    assert [r["task_id"] for r in team_view["runs"]] == [run.celery_task_id]
    assert team_view["worker_tasks"] == team_view["workers"] == []
    assert cancel.status_code == 200
    assert (cancel.json()["state"], cancel.json()["message"]) == ("CANCELLED", "cancelled while running")
    # the worker's pool process is terminated: Celery records REVOKED, never SUCCESS
    wait_for(lambda: current_app.AsyncResult(run.celery_task_id).state == "REVOKED", timeout=15, what="revoked")
    time.sleep(2)  # room for a wrong redelivery or late finish to show
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED
    assert run.result is None
    assert current_app.AsyncResult(run.celery_task_id).state == "REVOKED"
    status = viewer_client.get(f"/api/v1/tasks/status/{run.celery_task_id}").json()
    assert (status["state"], status["celery_state"]) == ("CANCELLED", "REVOKED")


def test_queued_task_cancelled_before_a_worker_consumes_it_never_runs(operator_client, tmp_path):
    # given: no worker yet, the message waits in the broker
    flush_broker()
    account = CloudAccountFactory()
    accepted = operator_client.post("/api/v1/tasks/monitor/budgets", {"account_id": account.id}, format="json").json()
    task_id = accepted["task_id"]
    # when
    cancel = operator_client.delete(f"/api/v1/tasks/cancel/{task_id}")
    worker = start_worker(tmp_path)
    try:
        # then: the worker receives the message and drops it
        wait_for(lambda: "dropping delivery" in worker.log and task_id in worker.log, what="delivery to be dropped")
    finally:
        worker.stop()
    assert cancel.status_code == 200
    run = TaskRun.objects.get(celery_task_id=task_id)
    assert run.state == RunState.CANCELLED
    assert (run.started_at, run.worker, run.result) == (None, "", None)
    assert run.error == "cancelled before it started"


def test_active_answers_from_the_workers_snapshots_fast(platform_client, celery_worker_proc):
    # given: a run executing on a real worker
    run = task_enqueue(task_name="platform_probe", kwargs={"sleep": 6}, triggered_by=TriggerKind.COMMAND)
    wait_for(
        lambda: any(
            t["task_id"] == run.celery_task_id
            for t in platform_client.get("/api/v1/tasks/active").json()["worker_tasks"]
        ),
        timeout=10,
        what="the run in the worker's heartbeat snapshot",
    )
    # when: 20 requests, no broadcast
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        body = platform_client.get("/api/v1/tasks/active").json()
        timings.append(time.perf_counter() - started)
    # then
    p95 = sorted(timings)[18]
    assert p95 < 0.2, timings
    [task] = [t for t in body["worker_tasks"] if t["task_id"] == run.celery_task_id]
    assert (task["kind"], task["name"], task["run_id"]) == ("active", "platform_probe", str(run.id))
    assert body["workers"] and body["inspect_error"] == ""
    # and the live broadcast is still there behind the flag
    live = platform_client.get("/api/v1/tasks/active?live=true").json()
    assert [t["kind"] for t in live["worker_tasks"] if t["task_id"] == run.celery_task_id] == ["active"]

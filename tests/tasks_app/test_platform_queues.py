"""Each of the seed's six tasks runs through its own queue on a worker that consumes only that queue."""

import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from costs_app.models import CostLineItem
from costs_app.services.ingest import focus_file_import
from providers_app.models import Resource
from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import flush_broker, start_worker, wait_for
from tests.factories import CloudAccountFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SAMPLE = Path(settings.BASE_DIR) / "tests" / "providers_app" / "data" / "focus_sample_1.0.csv"

SEED_QUEUES = {
    "sync_provider_cost_data": "cost_sync",
    "discover_provider_resources": "resource_discovery",
    "monitor_budget": "monitoring",
    "analyze_optimization_opportunities": "analysis",
    "detect_cost_anomalies": "analysis",
    "cleanup_old_data": "maintenance",
}


@pytest.fixture
def sample_account():
    if not SAMPLE.exists():
        pytest.fail(f"the FOCUS sample is missing at {SAMPLE}")
    return CloudAccountFactory(name="focus-sample", settings={"path": str(SAMPLE)})


@pytest.mark.parametrize("task_name", list(SEED_QUEUES))
def test_each_task_runs_through_its_own_queue(task_name, sample_account, tmp_path):
    # given: a worker consuming only the seed's queue of this task; sample cost data for the analyses
    queue = SEED_QUEUES[task_name]
    if task_name != "sync_provider_cost_data":
        focus_file_import(account=sample_account, path=str(SAMPLE))
    kwargs = {"dry_run": True} if task_name == "cleanup_old_data" else {"account_id": sample_account.id}
    flush_broker()
    worker = start_worker(tmp_path, queues=queue)
    try:
        # when
        run = task_enqueue(task_name=task_name, kwargs=kwargs, triggered_by=TriggerKind.COMMAND)
        finished = wait_for(
            lambda: TaskRun.objects.filter(id=run.id, state__in=(RunState.SUCCESS, RunState.FAILURE)).first(),
            timeout=60,
            what=f"{task_name} to finish",
        )
    finally:
        worker.stop()
    # then: it ran on that worker, from that queue, and left its TaskRun
    assert finished.state == RunState.SUCCESS, finished.error
    assert finished.queue == queue
    assert finished.worker.startswith("test-")
    assert f"Task {task_name}[{run.celery_task_id}] received" in worker.log
    assert f"Task {task_name}[{run.celery_task_id}] succeeded" in worker.log
    assert isinstance(finished.result, dict) and finished.result
    if task_name == "sync_provider_cost_data":
        assert finished.result["rows_loaded"] > 0
        assert CostLineItem.objects.filter(account=sample_account).count() == finished.result["rows_loaded"]
    if task_name == "discover_provider_resources":
        assert finished.result["resources_seen"] > 0
        assert Resource.objects.filter(account=sample_account).count() == finished.result["resources_seen"]


def test_a_worker_on_other_queues_does_not_take_a_task(sample_account, tmp_path):
    # given: a worker for every queue but cost_sync
    flush_broker()
    others = ",".join(q for q in settings.TASK_QUEUES if q != "cost_sync")
    worker = start_worker(tmp_path, queues=others)
    try:
        # when
        run = task_enqueue(
            task_name="sync_provider_cost_data", kwargs={"account_id": sample_account.id}, triggered_by="command"
        )
        # then: it waits in cost_sync
        wait_for(lambda: _queue_length("cost_sync") == 1, what="the message in cost_sync")
        time.sleep(2)
        run.refresh_from_db()
        assert run.state == RunState.QUEUED
        assert run.celery_task_id not in worker.log
    finally:
        worker.stop()


def _queue_length(queue: str) -> int:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(queue)

"""A correlation id follows a run into every child task it fans out to, and into every log line of them."""

import json
from pathlib import Path

import pytest
from django.conf import settings

from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import wait_for
from tests.factories import CloudAccountFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SAMPLE = Path(settings.BASE_DIR) / "tests" / "providers_app" / "data" / "focus_sample_1.0.csv"


def json_lines(log: str) -> list[dict]:
    lines = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the worker's banner
        if isinstance(record, dict):
            lines.append(record)
    return lines


def test_fan_out_children_carry_the_parents_correlation_id(celery_worker_proc):
    # given: two active accounts and one inactive
    active = [CloudAccountFactory(settings={"path": str(SAMPLE)}) for _ in range(2)]
    CloudAccountFactory(is_active=False, settings={"path": str(SAMPLE)})
    # when: a sync for all accounts, as an API request with X-Correlation-ID would enqueue it
    parent = task_enqueue(
        task_name="sync_provider_cost_data", triggered_by=TriggerKind.API, correlation_id="corr-fan-1"
    )
    done = (RunState.SUCCESS, RunState.FAILURE)
    wait_for(lambda: TaskRun.objects.filter(id=parent.id, state__in=done).exists(), what="the parent to finish")
    children = wait_for(
        lambda: (
            list(TaskRun.objects.filter(parent_id=parent.id))
            if TaskRun.objects.filter(parent_id=parent.id, state__in=done).count() == 2
            else None
        ),
        timeout=60,
        what="both children to finish",
    )
    # then: one child per active account, each linked to the parent and carrying its correlation id
    parent.refresh_from_db()
    assert parent.state == RunState.SUCCESS
    assert sorted(parent.result["children"]) == sorted(child.celery_task_id for child in children)
    assert sorted(child.kwargs["account_id"] for child in children) == sorted(account.id for account in active)
    for child in children:
        assert child.correlation_id == "corr-fan-1"
        assert child.triggered_by == TriggerKind.PARENT
        assert child.trigger_detail == parent.celery_task_id
        assert child.queue == "cost_sync"
        assert child.state == RunState.SUCCESS, child.error

    # and: every JSON log line the worker wrote inside these tasks carries it
    task_ids = {parent.celery_task_id} | {child.celery_task_id for child in children}
    lines = [record for record in json_lines(celery_worker_proc.log) if record.get("task_id") in task_ids]
    assert {record["task_id"] for record in lines} == task_ids
    assert {record["correlation_id"] for record in lines} == {"corr-fan-1"}


def test_a_plain_delay_gets_a_ledger_row_and_a_correlation_id(celery_worker_proc):
    # given: a FinOps task published with .delay(), not task_enqueue (the before_task_publish path)
    from tasks_app.tasks import platform_noop

    # when
    async_result = platform_noop.delay(value=5)
    # then
    run = wait_for(
        lambda: TaskRun.objects.filter(celery_task_id=async_result.id, state=RunState.SUCCESS).first(),
        what="the delayed run to succeed",
    )
    assert run.result == 5
    assert run.triggered_by == TriggerKind.OTHER
    assert len(run.correlation_id) == 32
    lines = [r for r in json_lines(celery_worker_proc.log) if r.get("task_id") == async_result.id]
    assert lines and {r["correlation_id"] for r in lines} == {run.correlation_id}

"""The platform path end to end: a FinOps task through a real worker leaves a TaskRun."""

import pytest

from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_enqueued_task_runs_on_real_worker_and_is_recorded(celery_worker_proc):
    # given
    run = task_enqueue(
        task_name="platform_noop", kwargs={"value": 7}, triggered_by=TriggerKind.COMMAND, correlation_id="smoke-corr"
    )
    # when
    done = wait_for(lambda: TaskRun.objects.filter(id=run.id, state=RunState.SUCCESS).first(), what="run to succeed")
    # then
    assert done.result == 7
    assert done.correlation_id == "smoke-corr"
    assert done.worker.startswith("test-")
    assert done.duration_ms is not None

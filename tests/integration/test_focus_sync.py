"""sync_provider_cost_data and discover_provider_resources for a focus account, through a real worker."""

import shutil

import pytest

from costs_app.models import CostDailyRollup, CostLineItem
from providers_app.models import Resource
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import wait_for
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE, SAMPLE_ROWS, sample_rows, write_csv

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished(run: TaskRun) -> TaskRun:
    def done():
        current = TaskRun.objects.get(id=run.id)
        return current if current.state in (RunState.SUCCESS, RunState.FAILURE) else None

    return wait_for(done, timeout=90, what=f"{run.task_name} to finish")


def sync(account, **kwargs) -> TaskRun:
    run = task_enqueue(
        task_name="sync_provider_cost_data",
        kwargs={"account_id": account.id, **kwargs},
        triggered_by=TriggerKind.COMMAND,
    )
    return finished(run)


def test_sync_loads_the_sample_then_a_malformed_file_fails_and_keeps_it(celery_worker_proc, tmp_path):
    # given: a focus account reading a copy of the sample
    export = tmp_path / "focus.csv"
    shutil.copy(SAMPLE, export)
    account = CloudAccountFactory(settings={"path": str(export)})
    # when
    ok = sync(account)
    # then
    assert ok.state == RunState.SUCCESS, ok.error
    assert ok.queue == "cost_sync"
    assert ok.result["rows_read"] == ok.result["rows_loaded"] == SAMPLE_ROWS
    assert ok.result["periods"] == {"2024-09": 999, "2024-10": 1}
    assert {(v["rule"], v["column"]) for v in ok.result["report"]["violations"]} == {
        ("not_null", "ContractedCost"),
        ("allowed_values_spelling", "ChargeFrequency"),
    }
    assert CostLineItem.objects.filter(account=account).count() == SAMPLE_ROWS
    rollups = CostDailyRollup.objects.filter(account=account).count()
    assert rollups > 0

    # given: the export is replaced by a file with a bad decimal in row 17
    header, rows = sample_rows()
    rows[16]["BilledCost"] = "abc"
    write_csv(export, header, rows)
    # when
    failed = sync(account)
    # then: a failed run with the message, a dead letter, and the data of the first sync intact
    assert failed.state == RunState.FAILURE
    assert "focus.csv row 17 column BilledCost: 'abc' is not a decimal" in failed.error
    assert failed.retries == 0  # a bad file is not retried
    letter = DeadLetter.objects.get(run=failed)
    assert "row 17 column BilledCost" in letter.error
    assert CostLineItem.objects.filter(account=account).count() == SAMPLE_ROWS
    assert CostDailyRollup.objects.filter(account=account).count() == rollups


def test_syncing_twice_leaves_the_same_rows_and_discovery_builds_the_inventory(celery_worker_proc, tmp_path):
    # given
    account = CloudAccountFactory(settings={"path": str(SAMPLE)})
    first = sync(account)
    # when: again (the file unchanged: nothing reloaded), then forced (reloaded)
    second = sync(account)
    forced = sync(account, force=True)
    discovery = finished(
        task_enqueue(
            task_name="discover_provider_resources",
            kwargs={"account_id": account.id},
            triggered_by=TriggerKind.COMMAND,
        )
    )
    # then
    assert (first.state, second.state, forced.state) == (RunState.SUCCESS,) * 3
    assert (second.result["rows_loaded"], second.result["unchanged_periods"]) == (0, ["2024-09", "2024-10"])
    assert forced.result["rows_replaced"] == SAMPLE_ROWS
    assert CostLineItem.objects.filter(account=account).count() == SAMPLE_ROWS
    assert discovery.state == RunState.SUCCESS, discovery.error
    assert discovery.queue == "resource_discovery"
    assert discovery.result["resources_seen"] == Resource.objects.filter(account=account).count() > 0

"""Retention: only rows past their class's retention go, in batches; a dry run deletes nothing."""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_results.models import TaskResult

from costs_app.models import BudgetAlert, CostDailyRollup, CostLineItem
from tasks_app.models import DeadLetter, RunState, TaskRun
from tasks_app.services.retention import old_data_cleanup
from tests.factories import BudgetFactory, CloudAccountFactory, CostLineItemFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def retention(settings):
    settings.RETENTION_DAYS = {"cost_lines": 365, "task_runs": 90, "task_results": 30, "resolved_alerts": 180}
    settings.RETENTION_BATCH_SIZE = 2
    return settings


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def run(*, state=RunState.SUCCESS, age: int, parent=None) -> TaskRun:
    return TaskRun.objects.create(
        task_name="platform_noop", celery_task_id=str(uuid.uuid4()), state=state, enqueued_at=ago(age), parent=parent
    )


def alert(budget, *, threshold: int, resolved_age: int | None) -> BudgetAlert:
    return BudgetAlert.objects.create(
        budget=budget,
        period_start=date(2024, 1, 1),
        threshold=Decimal(threshold),
        spend=Decimal(1),
        percentage=Decimal(threshold),
        created_at=ago(400),
        resolved_at=ago(resolved_age) if resolved_age is not None else None,
    )


@pytest.fixture
def data():
    account = CloudAccountFactory()
    old_lines = [CostLineItemFactory(account=account, charge_period_start=ago(366 + i)) for i in range(5)]
    new_lines = [CostLineItemFactory(account=account, charge_period_start=ago(364)) for _ in range(2)]
    CostDailyRollup.objects.create(
        account=account, day=ago(400).date(), billing_period_start=ago(400), billing_currency="USD"
    )
    old_runs = [run(age=91), run(state=RunState.FAILURE, age=200), run(state=RunState.CANCELLED, age=100)]
    kept_runs = [run(age=89), run(state=RunState.STARTED, age=200), run(state=RunState.QUEUED, age=120)]
    for task_id, age in [("old-0", 31), ("old-1", 32), ("old-2", 33), ("new", 29)]:
        TaskResult.objects.create(task_id=task_id, status="SUCCESS")
        # date_done is auto_now: age it afterwards
        TaskResult.objects.filter(task_id=task_id).update(date_done=ago(age))
    budget = BudgetFactory()
    alerts = {
        "old_resolved": alert(budget, threshold=50, resolved_age=181),
        "new_resolved": alert(budget, threshold=80, resolved_age=179),
        "unresolved": alert(budget, threshold=100, resolved_age=None),
    }
    return {
        "old_lines": old_lines,
        "new_lines": new_lines,
        "old_runs": old_runs,
        "kept_runs": kept_runs,
        "alerts": alerts,
    }


def test_deletes_only_rows_past_retention_in_batches(data):
    # when
    result = old_data_cleanup(now=NOW).as_dict()
    # then
    assert result["deleted"] == {"cost_lines": 5, "task_runs": 3, "task_results": 3, "resolved_alerts": 1}
    assert result["batches"] == {"cost_lines": 3, "task_runs": 2, "task_results": 2, "resolved_alerts": 1}
    assert result["cutoffs"]["task_runs"] == ago(90).isoformat()
    assert set(CostLineItem.objects.values_list("id", flat=True)) == {line.id for line in data["new_lines"]}
    assert set(TaskRun.objects.values_list("id", flat=True)) == {r.id for r in data["kept_runs"]}
    assert list(TaskResult.objects.values_list("task_id", flat=True)) == ["new"]
    assert set(BudgetAlert.objects.values_list("threshold", flat=True)) == {Decimal(80), Decimal(100)}
    # the daily rollups are the long-term summary and stay
    assert CostDailyRollup.objects.count() == 1


def test_each_batch_is_a_limited_delete(data):
    # when
    with CaptureQueriesContext(connection) as queries:
        old_data_cleanup(now=NOW)
    # then
    line_deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "costs_app_costlineitem"')]
    assert len(line_deletes) == 3
    assert all("LIMIT 2 FOR UPDATE SKIP LOCKED" in sql for sql in line_deletes)


def test_dry_run_counts_and_deletes_nothing(data):
    # given
    before = (CostLineItem.objects.count(), TaskRun.objects.count(), TaskResult.objects.count())
    # when
    result = old_data_cleanup(now=NOW, dry_run=True).as_dict()
    # then
    assert result["dry_run"] is True
    assert result["would_delete"] == {"cost_lines": 5, "task_runs": 3, "task_results": 3, "resolved_alerts": 1}
    assert "deleted" not in result
    assert (CostLineItem.objects.count(), TaskRun.objects.count(), TaskResult.objects.count()) == before
    assert BudgetAlert.objects.count() == 3


def test_old_runs_take_their_dead_letters_and_release_runs_pointing_at_them():
    # given: an old failed run with a dead letter that was replayed by a recent run, and a recent child run
    old = run(state=RunState.FAILURE, age=120)
    replay = run(age=1)
    DeadLetter.objects.create(run=old, task_name=old.task_name, error="boom", replay_run=replay)
    recent_letter_run = run(state=RunState.FAILURE, age=2)
    recent_letter = DeadLetter.objects.create(run=recent_letter_run, task_name="x", error="e", replay_run=old)
    child = run(age=3, parent=old)
    # when
    result = old_data_cleanup(now=NOW)
    # then
    assert result.classes["task_runs"].rows == 1
    assert not TaskRun.objects.filter(id=old.id).exists()
    assert list(DeadLetter.objects.values_list("id", flat=True)) == [recent_letter.id]
    recent_letter.refresh_from_db()
    child.refresh_from_db()
    assert recent_letter.replay_run_id is None
    assert child.parent_id is None
    assert TaskRun.objects.filter(id=replay.id).exists()


def test_zero_days_keeps_a_class_forever(data, retention):
    # given
    retention.RETENTION_DAYS = {**retention.RETENTION_DAYS, "cost_lines": 0}
    # when
    result = old_data_cleanup(now=NOW).as_dict()
    # then
    assert result["deleted"]["cost_lines"] == 0
    assert result["cutoffs"]["cost_lines"] is None
    assert CostLineItem.objects.count() == 7

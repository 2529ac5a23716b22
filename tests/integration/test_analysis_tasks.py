"""The four analysis tasks through a real worker: each goes through its seed queue and records its counts."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.utils import timezone

from costs_app.models import Anomaly, AnomalyMonitor, BudgetAlert, CostDailyRollup, CostLineItem, Recommendation
from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import wait_for
from tests.factories import BudgetFactory, CloudAccountFactory, CostLineItemFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def midnight(day) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def finished(run: TaskRun) -> TaskRun:
    def done():
        current = TaskRun.objects.get(id=run.id)
        return current if current.state in (RunState.SUCCESS, RunState.FAILURE) else None

    current = wait_for(done, timeout=60, what=f"{run.task_name} to finish")
    assert current.state == RunState.SUCCESS, current.error
    return current


@pytest.fixture
def analysis_data():
    today = timezone.now().date()
    # The data migration's default monitors (a transactional test elsewhere may have flushed them).
    AnomalyMonitor.objects.get_or_create(name="Accounts", defaults={"dimension": "account"})
    AnomalyMonitor.objects.get_or_create(name="Services per account", defaults={"dimension": "service"})
    # Account with a steady ~100/day that spikes to 500 on its latest data day (yesterday).
    spiky = CloudAccountFactory(name="spiky")
    values = [*(100 * (1 + np.random.default_rng(3).uniform(-0.03, 0.03, 40))), 500.0]
    CostDailyRollup.objects.bulk_create(
        CostDailyRollup(
            account=spiky,
            day=today - timedelta(days=len(values) - i),
            billing_period_start=midnight(today.replace(day=1)),
            service_name="Amazon EC2",
            billing_currency="USD",
            billed_cost=Decimal(f"{v:.2f}"),
            effective_cost=Decimal(f"{v:.2f}"),
            list_cost=Decimal(f"{v:.2f}"),
        )
        for i, v in enumerate(values)
    )
    # A budgeted account with spend today: its budget is crossed at every threshold, whatever day of the month.
    budgeted = CloudAccountFactory(name="budgeted")
    CostDailyRollup.objects.create(
        account=budgeted,
        day=today,
        billing_period_start=midnight(today.replace(day=1)),
        billing_currency="USD",
        billed_cost=Decimal("150.00"),
    )
    BudgetFactory(account=budgeted, amount=Decimal("100.00"), thresholds=[50, 80, 100])
    # Account with an idle volume billed every day for 30 days, and one line past cost-line retention.
    idle = CloudAccountFactory(name="idle")
    for i in range(1, 31):
        day = today - timedelta(days=i)
        CostLineItemFactory(
            account=idle,
            resource_id="vol-idle",
            service_category="Storage",
            billed_cost=Decimal("2.00"),
            consumed_quantity=Decimal(0),
            billing_period_start=midnight(day.replace(day=1)),  # a charge lies in its billing period
            billing_period_end=midnight((day.replace(day=1) + timedelta(days=32)).replace(day=1)),
            charge_period_start=midnight(day),
            charge_period_end=midnight(day) + timedelta(days=1),
        )
    CostDailyRollup.objects.create(
        account=idle, day=today - timedelta(days=1), billing_period_start=midnight(today), billing_currency="USD"
    )
    CostLineItemFactory(account=idle, charge_period_start=midnight(today - timedelta(days=4 * 365)))
    return {"spiky": spiky, "idle": idle}


@pytest.mark.parametrize(
    ("task_name", "kwargs", "queue"),
    [
        ("monitor_budget", {}, "monitoring"),
        ("analyze_optimization_opportunities", {"account_id": "idle"}, "analysis"),
        ("detect_cost_anomalies", {"account_id": "spiky"}, "analysis"),
        ("cleanup_old_data", {}, "maintenance"),
    ],
)
def test_analysis_task_runs_through_its_queue_and_records_counts(
    celery_worker_proc, analysis_data, task_name, kwargs, queue
):
    # given
    kwargs = {k: analysis_data[v].id if k == "account_id" else v for k, v in kwargs.items()}
    # when
    run = task_enqueue(task_name=task_name, kwargs=kwargs, triggered_by=TriggerKind.COMMAND)
    done = finished(run)
    # then
    assert done.queue == queue
    assert done.triggered_by == TriggerKind.COMMAND
    result = done.result
    if task_name == "monitor_budget":
        assert result["budgets_checked"] == 1 and result["alerts_created"] == 3
        assert BudgetAlert.objects.count() == 3
    elif task_name == "analyze_optimization_opportunities":
        # and untagged_spend: nothing carries the default required tag key "owner"
        assert result["found"]["idle_resources"] == 1 and result["found"]["untagged_spend"] == 1
        assert result["created"] == 2
        assert Recommendation.objects.get(rule="idle_resources").provider_resource_id == "vol-idle"
    elif task_name == "detect_cost_anomalies":
        assert result["accounts"] == 1 and result["created"] == 2
        assert set(Anomaly.objects.values_list("dimension_value", flat=True)) == {"", "Amazon EC2"}
    else:
        assert result["dry_run"] is False and result["deleted"]["cost_lines"] == 1
        assert CostLineItem.objects.count() == 30

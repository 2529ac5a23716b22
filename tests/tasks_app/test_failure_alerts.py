"""A failure storm sends one alert at once and one with the count, not one per failure."""

import pytest
import redis
from django.core import mail

from costs_app.models import NotificationChannel  # noqa: F401  (the factory's model)
from tasks_app.models import RunState, TaskRun
from tasks_app.services.runs import failure_alerts_flush, run_dead_letter
from tests.celery_procs import flush_broker
from tests.factories import NotificationChannelFactory

pytestmark = pytest.mark.django_db


def failed(n: int, task: str = "sync_provider_cost_data") -> list[TaskRun]:
    return [
        TaskRun.objects.create(task_name=task, celery_task_id=f"{task}-{i}", state=RunState.FAILURE, error=f"boom {i}")
        for i in range(n)
    ]


def test_a_hundred_failures_send_one_alert_then_one_with_the_count(settings):
    # given
    flush_broker()
    settings.TASK_FAILURE_ALERT_WINDOW = 600
    NotificationChannelFactory(name="oncall", target="oncall@example.com", notify_task_failures=True, team=None)
    # when: a storm
    for run in failed(100):
        run_dead_letter(run_id=run.id)
    # then: the first alerted, the rest held back while the window lasts
    assert len(mail.outbox) == 1 and "boom 0" in mail.outbox[0].body
    assert failure_alerts_flush() == 0

    # when: the window is over (its key expires) and the reconciler flushes
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("finops:alerts:window:sync_provider_cost_data")
    assert failure_alerts_flush() == 1
    # then: one more message, with the count
    assert len(mail.outbox) == 2
    assert "99 more runs of sync_provider_cost_data failed" in mail.outbox[1].body
    assert failure_alerts_flush() == 0


def test_each_task_has_its_own_window(settings):
    flush_broker()
    settings.TASK_FAILURE_ALERT_WINDOW = 600
    NotificationChannelFactory(name="oncall", target="oncall@example.com", notify_task_failures=True, team=None)
    for run in failed(3, "monitor_budget") + failed(3, "detect_cost_anomalies"):
        run_dead_letter(run_id=run.id)
    assert sorted(m.subject for m in mail.outbox) == [
        "[FinOps] task detect_cost_anomalies failed",
        "[FinOps] task monitor_budget failed",
    ]

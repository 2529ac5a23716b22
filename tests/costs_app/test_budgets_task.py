"""monitor_budget through the real task path: a Celery worker, the broker, PostgreSQL, a real SMTP server and real
HTTP receivers on 127.0.0.1 — alerts once under concurrent runs, and a failing channel retried by a follow-up run."""

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from costs_app.models import AlertDelivery, BudgetAlert, ChannelKind, CostDailyRollup, DeliveryStatus
from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import child_env, flush_broker, start_worker, wait_for
from tests.costs_app.smtp_sink import smtp_sink  # noqa: F401  (fixture)
from tests.costs_app.webhook_sink import webhook_sink  # noqa: F401  (fixture)
from tests.factories import BudgetFactory, CloudAccountFactory, NotificationChannelFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def budget_worker(transactional_db, tmp_path, smtp_sink):  # noqa: F811
    """A worker (concurrency 2) that mails through the SMTP sink and retries deliveries after 1 s, 2 s, ..."""
    flush_broker()
    from tasks_app.platform import redis_client

    redis_client().delete("finops:monitor_budget:deliveries-follow-up")
    env = child_env(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(smtp_sink.port),
        BUDGET_NOTIFY_RETRY_BASE="1",
    )
    worker = start_worker(tmp_path, env=env, concurrency=2)
    yield worker
    worker.stop()


def spend_today(account, amount: str) -> None:
    today = timezone.now().date()
    CostDailyRollup.objects.create(
        account=account,
        day=today,
        billing_period_start=datetime(today.year, today.month, 1, tzinfo=UTC),
        service_name="Amazon EC2",
        billing_currency="USD",
        billed_cost=Decimal(amount),
    )


def finished(run: TaskRun, timeout: float = 60) -> TaskRun:
    return wait_for(
        lambda: TaskRun.objects.filter(id=run.id, state__in=[RunState.SUCCESS, RunState.FAILURE]).first(),
        timeout=timeout,
        what=f"run {run.celery_task_id} to finish",
    )


def test_monitor_budget_alerts_and_a_failing_channel_is_retried_by_a_follow_up_run(
    budget_worker,
    smtp_sink,  # noqa: F811
    webhook_sink,  # noqa: F811
):
    # given: a budget over 100 % with an e-mail, a Slack and a signed webhook channel; the webhook fails once
    account = CloudAccountFactory(name="prod")
    budget = BudgetFactory(account=account, name="prod monthly", amount=Decimal("100"), thresholds=[50, 100])
    webhook_sink.fail_first["/signed"] = (503, 1)
    signed = NotificationChannelFactory(name="signed", kind=ChannelKind.WEBHOOK, target=webhook_sink.url("/signed"))
    signed.set_signing_secret("receiver-shared-secret-0123")
    signed.save()
    budget.channels.add(
        signed,
        NotificationChannelFactory(name="slack", kind=ChannelKind.SLACK, target=webhook_sink.url("/slack")),
        NotificationChannelFactory(name="mail", target="owners@example.com"),
    )
    spend_today(account, "150")
    # when
    run = task_enqueue(task_name="monitor_budget", triggered_by=TriggerKind.COMMAND)
    done = finished(run)
    # then: two alerts, mail and Slack delivered at once, the webhook waiting for its retry
    assert done.state == RunState.SUCCESS, done.error
    assert (done.result["alerts_created"], done.result["notifications_sent"]) == (2, 2)
    assert done.result["notification_errors"] == 1 and done.result["deliveries_pending"] == 2
    assert BudgetAlert.objects.filter(budget=budget).count() == 2
    [message] = smtp_sink.messages
    assert message["To"] == "owners@example.com"
    assert message["Subject"] == "[FinOps] budget prod monthly: 50% actual, 100% actual reached (150.00% spent)"
    assert "Actual spend so far: 150.00 USD (150.00% of the budget)." in message.get_content()
    [slack] = webhook_sink.hits("/slack")
    assert slack.json["text"].startswith("*[FinOps] budget prod monthly:")

    # and then: a follow-up run of the same task, a second later, delivers the webhook
    follow_up = wait_for(
        lambda: TaskRun.objects.filter(task_name="monitor_budget", kwargs={"deliveries_only": True}).first(),
        what="the follow-up run",
    )
    assert (follow_up.triggered_by, follow_up.parent_id) == (TriggerKind.PARENT, run.id)
    assert finished(follow_up).result["notifications_sent"] == 1
    first, second = webhook_sink.hits("/signed")
    assert first.body == second.body
    assert second.json["budget"] == "prod monthly" and second.json["spend"] == "150.00"
    signature = hmac.new(b"receiver-shared-secret-0123", second.body, hashlib.sha256).hexdigest()
    assert second.headers["X-FinOps-Signature"] == f"sha256={signature}"
    deliveries = AlertDelivery.objects.filter(channel=signed)
    assert {(d.status, d.attempts) for d in deliveries} == {(DeliveryStatus.SENT, 2)}
    assert all(len(d.attempt_log) == 1 and "HTTP 503" in d.attempt_log[0]["error"] for d in deliveries)
    assert all(d.sent_at - d.created_at >= timedelta(seconds=1) for d in deliveries)


def test_two_concurrent_monitor_runs_create_each_alert_once_and_send_each_message_once(
    budget_worker,
    smtp_sink,  # noqa: F811
):
    # given: five budgets past three thresholds, one e-mail channel
    account = CloudAccountFactory()
    channel = NotificationChannelFactory(target="ops@example.com")
    for budget in BudgetFactory.create_batch(5, account=account, amount=Decimal("100"), thresholds=[50, 80, 100]):
        budget.channels.add(channel)
    spend_today(account, "120")
    # when: two runs at once on a worker with two processes
    runs = [task_enqueue(task_name="monitor_budget", triggered_by=TriggerKind.COMMAND) for _ in range(2)]
    done = [finished(run) for run in runs]
    # then
    assert [d.state for d in done] == [RunState.SUCCESS] * 2
    assert sum(d.result["alerts_created"] for d in done) == 15
    assert BudgetAlert.objects.count() == 15
    assert AlertDelivery.objects.filter(status=DeliveryStatus.SENT).count() == 15
    assert sum(d.result["notifications_sent"] for d in done) == 5
    wait_for(lambda: len(smtp_sink.messages) >= 5, what="the five messages")
    assert len(smtp_sink.messages) == 5
    assert "monitor_budget" in budget_worker.log

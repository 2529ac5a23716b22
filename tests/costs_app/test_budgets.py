"""Budget monitoring over the daily rollups: thresholds alert once per period, even under concurrent runs."""

import threading
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from costs_app.models import BudgetAlert, BudgetPeriod, ChannelKind, CostDailyRollup
from costs_app.services.budgets import budgets_check, period_bounds
from tests.costs_app.webhook_sink import webhook_sink  # noqa: F401  (fixture)
from tests.factories import BudgetFactory, CloudAccountFactory, NotificationChannelFactory

NOW = datetime(2024, 9, 20, 10, 0, tzinfo=UTC)


def spend(account, day: date, amount: str, *, service: str = "Amazon EC2", currency: str = "USD", region: str = ""):
    return CostDailyRollup.objects.create(
        account=account,
        day=day,
        billing_period_start=datetime(day.year, day.month, 1, tzinfo=UTC),
        service_name=service,
        region_id=region,
        billing_currency=currency,
        billed_cost=Decimal(amount),
        effective_cost=Decimal(amount),
        list_cost=Decimal(amount),
        line_count=1,
    )


def alerts_of(budget) -> list[tuple[Decimal, date]]:
    alerts = BudgetAlert.objects.filter(budget=budget).order_by("threshold")
    return list(alerts.values_list("threshold", "period_start"))


@pytest.mark.parametrize(
    ("period", "today", "bounds"),
    [
        (BudgetPeriod.MONTHLY, date(2024, 12, 31), (date(2024, 12, 1), date(2025, 1, 1))),
        (BudgetPeriod.QUARTERLY, date(2024, 8, 15), (date(2024, 7, 1), date(2024, 10, 1))),
        (BudgetPeriod.QUARTERLY, date(2024, 12, 1), (date(2024, 10, 1), date(2025, 1, 1))),
        (BudgetPeriod.ANNUAL, date(2024, 2, 29), (date(2024, 1, 1), date(2025, 1, 1))),
    ],
)
def test_period_bounds(period, today, bounds):
    assert period_bounds(period, today) == bounds


@pytest.mark.django_db
def test_thresholds_alert_once_each_as_spend_grows():
    # given
    account = CloudAccountFactory()
    budget = BudgetFactory(account=account, amount=Decimal("1000"), thresholds=[50, 80, 100])
    budget.channels.add(NotificationChannelFactory(target="owner@example.com"))
    spend(account, date(2024, 9, 1), "300")
    spend(account, date(2024, 9, 2), "250")
    # when: 55 %
    first = budgets_check(now=NOW)
    # then
    assert first.alerts_created == 1
    assert alerts_of(budget) == [(Decimal("50.00"), date(2024, 9, 1))]
    alert = BudgetAlert.objects.get(budget=budget)
    assert alert.spend == Decimal("550") and alert.percentage == Decimal("55.00")
    assert alert.notified_at == NOW

    # when: 82 %, then 105 % (both 80 and the 100 threshold are crossed by the same run)
    spend(account, date(2024, 9, 3), "270")
    second = budgets_check(now=NOW)
    spend(account, date(2024, 9, 4), "230")
    third = budgets_check(now=NOW)
    # then
    assert (second.alerts_created, third.alerts_created) == (1, 1)
    assert [t for t, _ in alerts_of(budget)] == [Decimal("50.00"), Decimal("80.00"), Decimal("100.00")]
    assert third.over_budget == 1
    assert [m.subject for m in mail.outbox] == [
        f"[FinOps] budget {budget.name} passed 50% (55.00%)",
        f"[FinOps] budget {budget.name} passed 80% (82.00%)",
        f"[FinOps] budget {budget.name} passed 100% (105.00%)",
    ]


@pytest.mark.django_db
def test_a_second_run_creates_and_sends_nothing_new():
    # given
    account = CloudAccountFactory()
    budget = BudgetFactory(account=account, amount=Decimal("100"), thresholds=[50, 80, 100])
    budget.channels.add(NotificationChannelFactory())
    spend(account, date(2024, 9, 5), "90")
    first = budgets_check(now=NOW)
    # when
    second = budgets_check(now=NOW)
    # then
    assert first.alerts_created == 2
    assert first.notifications_sent == 1  # one message per budget naming both thresholds
    assert "Thresholds crossed now: 50%, 80%." in mail.outbox[0].body
    assert second.as_dict() == {
        "budgets_checked": 1,
        "alerts_created": 0,
        "alerts_resolved": 0,
        "notifications_sent": 0,
        "notification_errors": 0,
        "over_budget": 0,
    }
    assert BudgetAlert.objects.count() == 2
    assert len(mail.outbox) == 1


@pytest.mark.django_db
def test_spend_counts_only_the_budgets_scope_currency_and_period():
    # given
    account, other = CloudAccountFactory(), CloudAccountFactory()
    scoped = BudgetFactory(account=account, service_name="Amazon S3", amount=Decimal("100"), thresholds=[50])
    everything = BudgetFactory(amount=Decimal("1000"), thresholds=[50])
    spend(account, date(2024, 9, 2), "40", service="Amazon S3")
    spend(account, date(2024, 9, 2), "500", service="Amazon EC2")  # other service
    spend(account, date(2024, 9, 2), "900", service="Amazon S3", currency="EUR")  # other currency
    spend(account, date(2024, 8, 31), "900", service="Amazon S3")  # last period
    spend(other, date(2024, 9, 3), "45", service="Amazon S3")  # other account
    # when
    result = budgets_check(now=NOW)
    # then: the scoped budget sees 40 (40 %), the all-accounts budget sees 40 + 500 + 45 = 585 (58.5 %)
    assert result.budgets_checked == 2
    assert alerts_of(scoped) == []
    assert [t for t, _ in alerts_of(everything)] == [Decimal("50.00")]
    assert BudgetAlert.objects.get(budget=everything).spend == Decimal("585")


@pytest.mark.django_db
def test_quarterly_budget_sums_the_quarter_and_filters_by_account_argument():
    # given
    account, other = CloudAccountFactory(), CloudAccountFactory()
    quarterly = BudgetFactory(account=account, period=BudgetPeriod.QUARTERLY, amount=Decimal("300"), thresholds=[100])
    not_checked = BudgetFactory(account=other, amount=Decimal("1"), thresholds=[50])
    spend(account, date(2024, 7, 10), "100")
    spend(account, date(2024, 8, 10), "100")
    spend(account, date(2024, 9, 10), "100")
    spend(other, date(2024, 9, 10), "100")
    # when
    result = budgets_check(account_id=account.id, now=NOW)
    # then
    assert result.budgets_checked == 1
    assert alerts_of(quarterly) == [(Decimal("100.00"), date(2024, 7, 1))]
    assert alerts_of(not_checked) == []


@pytest.mark.django_db
def test_alerts_of_a_finished_period_are_resolved_and_the_new_period_alerts_again():
    # given
    account = CloudAccountFactory()
    budget = BudgetFactory(account=account, amount=Decimal("100"), thresholds=[50])
    spend(account, date(2024, 8, 20), "60")
    budgets_check(now=datetime(2024, 8, 25, tzinfo=UTC))
    spend(account, date(2024, 9, 2), "70")
    # when
    result = budgets_check(now=NOW)
    # then
    assert result.alerts_resolved == 1 and result.alerts_created == 1
    august, september = BudgetAlert.objects.filter(budget=budget).order_by("period_start")
    assert august.resolved_at == NOW and september.resolved_at is None
    assert september.period_start == date(2024, 9, 1)


@pytest.mark.django_db
def test_channels_receive_and_a_failing_channel_is_recorded_without_blocking(webhook_sink):  # noqa: F811
    # given
    account = CloudAccountFactory()
    budget = BudgetFactory(account=account, name="team-a", amount=Decimal("200"), thresholds=[50])
    webhook_sink.fail_paths["/down"] = 500
    budget.channels.add(
        NotificationChannelFactory(name="down", kind=ChannelKind.WEBHOOK, target=webhook_sink.url("/down")),
        NotificationChannelFactory(name="hook", kind=ChannelKind.WEBHOOK, target=webhook_sink.url("/hook")),
        NotificationChannelFactory(name="mail", target="team-a@example.com"),
        NotificationChannelFactory(name="muted", target="muted@example.com", is_active=False),
    )
    spend(account, date(2024, 9, 1), "123.45")
    # when
    result = budgets_check(now=NOW)
    # then
    assert (result.notifications_sent, result.notification_errors) == (2, 1)
    hook = next(hit for hit in webhook_sink.received if hit.path == "/hook")
    assert hook.json["event"] == "budget_threshold"
    assert hook.json["budget"] == "team-a"
    assert hook.json["spend"] == "123.45"
    assert hook.json["percentage"] == "61.73"
    assert hook.json["thresholds"] == ["50.00"]
    assert [m.to for m in mail.outbox] == [["team-a@example.com"]]
    alert = BudgetAlert.objects.get(budget=budget)
    assert len(alert.notification_errors) == 1 and "HTTP 500" in alert.notification_errors[0]


@pytest.mark.django_db
def test_query_count_does_not_grow_with_the_number_of_budgets():
    # given
    account = CloudAccountFactory()
    spend(account, date(2024, 9, 1), "1000")
    channel = NotificationChannelFactory()

    def run_with(n: int) -> int:
        BudgetAlert.objects.all().delete()
        for budget in BudgetFactory.create_batch(n, account=account, amount=Decimal("100"), thresholds=[50, 80]):
            budget.channels.add(channel)
        with CaptureQueriesContext(connection) as queries:
            result = budgets_check(now=NOW)
        assert result.alerts_created == 2 * result.budgets_checked
        return len(queries)

    # when
    few = run_with(1)
    many = run_with(20)
    # then
    assert few == many


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_create_exactly_one_alert_per_threshold():
    # given
    account = CloudAccountFactory()
    budgets = BudgetFactory.create_batch(5, account=account, amount=Decimal("100"), thresholds=[50, 80, 100])
    channel = NotificationChannelFactory(target="ops@example.com")
    for budget in budgets:
        budget.channels.add(channel)
    spend(account, date(2024, 9, 1), "120")
    barrier = threading.Barrier(2)
    results, failures = [], []

    def run():
        try:
            barrier.wait(timeout=10)
            results.append(budgets_check(now=NOW))
        except Exception as exc:  # surfaced by the assertion below
            failures.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    # when
    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # then
    assert failures == []
    assert BudgetAlert.objects.count() == 15
    assert sum(r.alerts_created for r in results) == 15
    assert sum(r.notifications_sent for r in results) == 5
    assert len(mail.outbox) == 5


@pytest.mark.django_db
def test_alert_of_a_budget_without_channels_is_sent_once_a_channel_is_added():
    # given
    account = CloudAccountFactory()
    budget = BudgetFactory(account=account, amount=Decimal("100"), thresholds=[50])
    spend(account, date(2024, 9, 1), "60")
    first = budgets_check(now=NOW)
    assert BudgetAlert.objects.get(budget=budget).notified_at is None
    budget.channels.add(NotificationChannelFactory(target="late@example.com"))
    # when
    second = budgets_check(now=NOW)
    third = budgets_check(now=NOW)
    # then
    assert (first.alerts_created, first.notifications_sent) == (1, 0)
    assert (second.alerts_created, second.notifications_sent) == (0, 1)
    assert third.notifications_sent == 0
    assert [m.to for m in mail.outbox] == [["late@example.com"]]

"""The budget pages of the admin: scope and thresholds edited with clear errors; alerts with figures and deliveries."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.urls import reverse

from costs_app.models import (
    AlertDelivery,
    Budget,
    BudgetAlert,
    ChannelKind,
    DeliveryStatus,
    NotificationChannel,
)
from tasks_app.models import TaskRun
from tests.factories import BudgetFactory, CloudAccountFactory, NotificationChannelFactory

pytestmark = pytest.mark.django_db


def budget_form(**fields) -> dict:
    data = {
        "name": "team web",
        "amount": "1500",
        "currency": "usd",
        "period": "monthly",
        "thresholds": '[50, 80, 100, {"value": 100, "basis": "forecasted"}]',
        "is_active": "on",
        "alerts-TOTAL_FORMS": "0",
        "alerts-INITIAL_FORMS": "0",
    }
    data.update(fields)
    return data


def test_a_budget_with_every_scope_filter_is_saved_and_its_new_tag_key_is_rolled_up_by_a_queued_check(admin_client):
    # given
    prod, staging = CloudAccountFactory(name="prod"), CloudAccountFactory(name="staging")
    channel = NotificationChannelFactory(name="team-web")
    # when
    response = admin_client.post(
        reverse("admin:costs_app_budget_add"),
        budget_form(
            period="custom",
            start_date="2024-10-01",
            end_date="2024-12-31",
            accounts=[prod.id, staging.id],
            sub_account_ids="111111111111\r\n222222222222\r\n",
            service_names="Amazon Elastic Compute Cloud - Compute\r\nAmazon Simple Storage Service",
            region_ids="us-east-1\r\n\r\neu-west-1",
            tag_key="team",
            tag_values="web\r\nweb-legacy",
            channels=[channel.id],
        ),
        follow=True,
    )
    # then
    assert response.status_code == 200, response.content.decode()[:2000]
    budget = Budget.objects.get(name="team web")
    assert budget.currency == "USD"
    assert (budget.period, budget.start_date, budget.end_date) == ("custom", date(2024, 10, 1), date(2024, 12, 31))
    assert sorted(budget.accounts.values_list("name", flat=True)) == ["prod", "staging"]
    assert budget.sub_account_ids == ["111111111111", "222222222222"]
    assert budget.service_names == ["Amazon Elastic Compute Cloud - Compute", "Amazon Simple Storage Service"]
    assert budget.region_ids == ["us-east-1", "eu-west-1"]
    assert (budget.tag_key, budget.tag_values) == ("team", ["web", "web-legacy"])
    assert [t.label() for t in budget.threshold_list()] == [
        "50% actual",
        "80% actual",
        "100% actual",
        "100% forecasted",
    ]
    run = TaskRun.objects.get(task_name="monitor_budget")
    assert run.kwargs == {"budget_id": budget.id}
    assert "Tag &#x27;team&#x27; becomes a cost allocation tag" in response.content.decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"period": "custom"}, "a fixed date range budget needs a start date"),
        (
            {"period": "custom", "start_date": "2024-10-05", "end_date": "2024-10-01"},
            "the end date is before the start",
        ),
        ({"tag_values": "web"}, "tag values are given but no tag key"),
        ({"thresholds": '[{"value": 80, "basis": "predicted"}]'}, "basis must be"),
        ({"thresholds": "[]"}, "a non-empty list"),
        ({"thresholds": "not json"}, "Enter a valid JSON."),
        ({"amount": "0"}, "Ensure this value is greater than or equal to 0.01."),
    ],
)
def test_a_bad_budget_is_refused_with_a_clear_error(admin_client, fields, message):
    # when
    response = admin_client.post(reverse("admin:costs_app_budget_add"), budget_form(**fields))
    # then
    assert response.status_code == 200
    assert message in response.content.decode().replace("&quot;", '"').replace("&#x27;", "'")
    assert not Budget.objects.exists()


def test_a_scope_with_too_many_combinations_is_refused(admin_client):
    # when: 101 services × 100 regions
    response = admin_client.post(
        reverse("admin:costs_app_budget_add"),
        budget_form(
            service_names="\n".join(f"service-{i}" for i in range(101)),
            region_ids="\n".join(f"region-{i}" for i in range(100)),
        ),
    )
    # then
    assert "this scope has 10,100 combinations" in response.content.decode()
    assert not Budget.objects.exists()


def test_budget_list_shows_scope_and_thresholds(admin_client):
    # given
    BudgetFactory(
        name="ec2",
        account=CloudAccountFactory(name="prod"),
        service_names=["Amazon EC2"],
        thresholds=[{"type": "absolute", "value": 900}, {"value": 100, "basis": "forecasted"}],
    )
    # when
    page = admin_client.get(reverse("admin:costs_app_budget_changelist")).content.decode()
    # then
    assert "account prod; service Amazon EC2" in page
    assert "900 USD actual, 100% forecasted" in page


def test_alerts_show_spend_forecast_percentage_and_delivery_status(admin_client):
    # given
    budget = BudgetFactory(name="prod monthly")
    alert = BudgetAlert.objects.create(
        budget=budget,
        period_start=date(2024, 9, 1),
        period_end=date(2024, 9, 30),
        basis="forecasted",
        threshold=Decimal("100"),
        threshold_amount=Decimal("1000"),
        currency="USD",
        spend=Decimal("812.5"),
        forecast=Decimal("1234.56"),
        percentage=Decimal("81.25"),
        forecast_percentage=Decimal("123.46"),
    )
    ok = NotificationChannelFactory(name="mail")
    down = NotificationChannelFactory(name="hook", kind=ChannelKind.WEBHOOK, target="https://hooks.example.com/x")
    AlertDelivery.objects.create(alert=alert, channel=ok, status=DeliveryStatus.SENT, attempts=1)
    AlertDelivery.objects.create(
        alert=alert, channel=down, status=DeliveryStatus.FAILED, attempts=6, last_error="channel 'hook': HTTP 500"
    )
    # when
    listing = admin_client.get(reverse("admin:costs_app_budgetalert_changelist")).content.decode()
    failed_only = admin_client.get(reverse("admin:costs_app_budgetalert_changelist") + "?delivery=failed")
    detail = admin_client.get(reverse("admin:costs_app_budgetalert_change", args=[alert.id])).content.decode()
    budget_page = admin_client.get(reverse("admin:costs_app_budget_change", args=[budget.id])).content.decode()
    # then
    for text in ("100% forecasted", "812.50 USD", "1,234.56 USD", "81 %", "(123 %)", "1 sent, 1 failed"):
        assert text in listing, text
    assert failed_only.status_code == 200 and "1 sent, 1 failed" in failed_only.content.decode()
    assert "HTTP 500" in detail and "hook" in detail
    assert "1 sent, 1 failed" in budget_page
    # the budget's own page shows its alerts' money as the lists do: currency, two decimals, no raw Decimal
    inline = budget_page.split('id="alerts-group"')[1]
    for text in ("812.50 USD", "1,234.56 USD", "81 % (123 %)"):
        assert text in inline, text
    assert "812.5000" not in inline and "1234.56" not in inline


def test_failed_deliveries_can_be_retried_from_the_admin(admin_client):
    # given
    alert = BudgetAlert.objects.create(
        budget=BudgetFactory(), period_start=date(2024, 9, 1), threshold=50, spend=Decimal(1), percentage=50
    )
    failed = AlertDelivery.objects.create(
        alert=alert, channel=NotificationChannelFactory(), status=DeliveryStatus.FAILED, attempts=6, last_error="x"
    )
    # when
    admin_client.post(
        reverse("admin:costs_app_alertdelivery_changelist"),
        {"action": "retry_now", "_selected_action": [str(failed.id)]},
        follow=True,
    )
    # then
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.last_error) == (DeliveryStatus.PENDING, 0, "x")
    assert failed.next_attempt_at is not None and failed.next_attempt_at > datetime(2024, 1, 1, tzinfo=UTC)


def test_webhook_signing_secret_is_set_encrypted_never_shown_and_can_be_cleared(admin_client):
    # given
    url = reverse("admin:costs_app_notificationchannel_add")
    form = {"name": "receiver", "kind": "webhook", "target": "https://hooks.example.com/finops", "is_active": "on"}
    # when
    short = admin_client.post(url, {**form, "signing_secret": "short"})
    admin_client.post(url, {**form, "signing_secret": "a-long-shared-secret-42"})
    channel = NotificationChannel.objects.get(name="receiver")
    page = admin_client.get(reverse("admin:costs_app_notificationchannel_change", args=[channel.id])).content.decode()
    admin_client.post(
        reverse("admin:costs_app_notificationchannel_change", args=[channel.id]),
        {"name": "receiver", "kind": "webhook", "is_active": "on", "clear_signing_secret": "on"},
    )
    # then
    assert "at least 16 characters" in short.content.decode()
    assert channel.get_signing_secret() == "a-long-shared-secret-42"
    assert "a-long-shared-secret-42" not in channel.signing_secret_ciphertext
    assert "a-long-shared-secret-42" not in page and "its own secret (encrypted)" in page
    channel.refresh_from_db()
    assert channel.get_signing_secret() == "" and channel.get_target() == "https://hooks.example.com/finops"

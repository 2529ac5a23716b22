"""The lists and forms people read: money, rule titles, details, the account form per provider, favicon and /."""

from decimal import Decimal

import pytest
from django.urls import reverse

from costs_app.admin import details_table, rule_title
from finops.money import format_money
from providers_app.models import CloudAccount
from providers_app.services.teams import team_default

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("227.450286000000000"), "227.45 USD"),
        (Decimal("0E-15"), "0.00 USD"),
        (Decimal("0.004216"), "0.004216 USD"),
        (Decimal("-1234567.891"), "-1,234,567.89 USD"),
        (None, "—"),
    ],
)
def test_money_is_shown_with_currency_and_sensible_precision(amount, text):
    assert format_money(amount, "USD") == text


def test_rules_by_title_and_details_as_a_table():
    assert rule_title("commitment_coverage") != "commitment_coverage"
    assert rule_title("untagged_spend") == "Spend without an owner tag"
    html = details_table({"cost_in_window": "12.3", "action": "<b>delete</b>", "thresholds": {"days": 14}}, "USD")
    assert "<th>Cost in window</th><td>12.30 USD</td>" in html
    assert "&lt;b&gt;delete&lt;/b&gt;" in html  # data, escaped
    assert "<th>Days</th><td>14</td>" in html


def account_form(**fields):
    return {
        "name": "files",
        "team": str(team_default().pk),
        "provider": "focus",
        "external_id": "x",
        "is_active": "on",
        "settings": "{}",
        "credential-TOTAL_FORMS": "0",
        "credential-INITIAL_FORMS": "0",
        "credential-MIN_NUM_FORMS": "0",
        "credential-MAX_NUM_FORMS": "1",
        **fields,
    }


def test_a_focus_account_is_set_up_with_its_own_field_and_a_missing_path_is_refused(admin_client, tmp_path):
    url = reverse("admin:providers_app_cloudaccount_add")
    refused = admin_client.post(url, account_form(focus__path=str(tmp_path / "missing")))
    assert refused.status_code == 200 and "does not exist" in refused.content.decode()
    assert not CloudAccount.objects.filter(name="files").exists()
    (tmp_path / "export.csv").write_text("x")
    admin_client.post(url, account_form(focus__path=str(tmp_path)))
    assert CloudAccount.objects.get(name="files").settings == {"path": str(tmp_path)}


def test_azure_fields_become_its_settings_and_the_secret_input_is_masked(admin_client):
    url = reverse("admin:providers_app_cloudaccount_add")
    page = admin_client.get(url).content.decode()
    assert 'type="password" name="credential-0-secret"' in page
    assert 'name="azure__storage_account_url"' in page and 'name="focus__path"' in page
    admin_client.post(
        url,
        account_form(
            provider="azure",
            azure__subscription_ids="sub-1, sub-2",
            azure__container="exports",
            settings='{"cpu_lookback_hours": 0}',
        ),
    )
    assert CloudAccount.objects.get(name="files").settings == {
        "cpu_lookback_hours": 0,
        "subscription_ids": ["sub-1", "sub-2"],
        "container": "exports",
    }


def test_root_leads_to_the_admin_and_the_favicon_is_served(client):
    assert client.get("/")["Location"] == "/admin/"
    assert client.get("/favicon.ico")["Location"].endswith("finops/favicon.svg")


def test_failed_24h_links_a_24h_filter_and_forgets_a_failure_replayed_successfully():
    from tasks_app.models import DeadLetter, RunState, TaskRun
    from tasks_app.templatetags.task_admin import task_system_summary
    from tests.factories import UserFactory

    admin = UserFactory(username="root", is_staff=True, is_superuser=True)  # the run has no account: org-wide

    failed = TaskRun.objects.create(task_name="monitor_budget", celery_task_id="f-1", state=RunState.FAILURE)
    letter = DeadLetter.objects.create(run=failed, task_name="monitor_budget", queue="monitoring", error="boom")
    summary = task_system_summary(admin)
    assert summary["failed_24h"] == 1 and "enqueued_at__gte=" in summary["failed_24h_query"]
    replay = TaskRun.objects.create(task_name="monitor_budget", celery_task_id="r-1", state=RunState.SUCCESS)
    DeadLetter.objects.filter(id=letter.id).update(replay_run=replay)
    assert task_system_summary(admin)["failed_24h"] == 0

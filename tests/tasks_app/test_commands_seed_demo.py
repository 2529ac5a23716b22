"""`seed_demo`: the quickstart's demo data, idempotent, with an admin whose password is only reset on request."""

import gzip
import io
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from costs_app.models import Budget, CostLineItem, NotificationChannel
from providers_app.models import CloudAccount
from tasks_app.management.commands.seed_demo import DEMO_FILE, REBASED_DIR

pytestmark = pytest.mark.django_db

DEMO_ROWS = 1000  # data rows of demo/focus_demo.csv.gz (the FinOps Foundation's FOCUS 1.0 sample)


def seed(*args) -> str:
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def counts() -> dict:
    return {
        "accounts": CloudAccount.objects.count(),
        "lines": CostLineItem.objects.count(),
        "budgets": Budget.objects.count(),
        "channels": NotificationChannel.objects.count(),
        "users": get_user_model().objects.count(),
    }


def test_demo_file_ships_with_the_repo():
    with gzip.open(DEMO_FILE, "rt") as handle:
        assert sum(1 for _ in handle) == DEMO_ROWS + 1


def test_seed_demo_creates_account_data_budgets_channel_and_admin():
    # when
    out = seed()
    # then
    account = CloudAccount.objects.get(name="demo-focus")
    assert account.provider == "focus"
    assert account.settings["path"] == str(REBASED_DIR / DEMO_FILE.name)
    assert CostLineItem.objects.filter(account=account).count() == DEMO_ROWS
    budgets = {b.name: b for b in Budget.objects.all()}
    assert set(budgets) == {"Demo account — monthly", "Demo compute — monthly"}
    for budget in budgets.values():
        assert [t.label() for t in budget.threshold_list()] == [
            "50% actual",
            "80% actual",
            "100% actual",
            "100% forecasted",
        ]
        assert budget.channels.filter(kind="email").exists()
        assert list(budget.accounts.all()) == [account]
    assert budgets["Demo compute — monthly"].service_names == ["Amazon Elastic Compute Cloud"]
    assert budgets["Demo account — monthly"].service_names == []
    assert "thresholds 50% actual, 80% actual, 100% actual, 100% forecasted" in out
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    password = out.split("with password ")[1].split("'")[1]
    assert admin.check_password(password)


def test_seed_demo_twice_duplicates_nothing_and_keeps_the_password():
    # given
    first_out = seed()
    first = counts()
    password = first_out.split("with password ")[1].split("'")[1]
    # when
    second_out = seed()
    # then
    assert counts() == first
    assert "password unchanged" in second_out
    assert get_user_model().objects.get(username="admin").check_password(password)


def test_seed_demo_sets_the_password_when_asked():
    # given
    seed("--username", "demo", "--password", "first-pass-123")
    # when
    out = seed("--username", "demo", "--password", "second-pass-456")
    # then
    user = get_user_model().objects.get(username="demo")
    assert user.check_password("second-pass-456")
    assert "password set" in out


def test_seed_demo_with_a_missing_file_fails(tmp_path):
    with pytest.raises(CommandError, match="demo data not found"):
        seed("--data", str(tmp_path / "missing.csv"))
    assert not CloudAccount.objects.exists()


def test_demo_data_is_moved_to_the_current_month_so_budgets_alert_in_the_quickstart():
    # given the demo's data is from September 2024 and today is later
    from django.utils import timezone

    from costs_app.models import BudgetAlert
    from costs_app.services.budgets import budgets_check

    now = timezone.now()
    # when
    seed()
    # then every row moved by the same whole number of months, starting this month
    account = CloudAccount.objects.get(name="demo-focus")
    periods = set(CostLineItem.objects.filter(account=account).values_list("billing_period_start", flat=True))
    this_month = datetime(now.year, now.month, 1, tzinfo=UTC)
    assert min(periods) == this_month
    assert CostLineItem.objects.filter(account=account, billing_period_start=this_month).count() == DEMO_ROWS - 1
    # and the demo budgets (sized to that month's spend) cross their thresholds now
    budgets_check(now=now)
    crossed = {(a.budget.name, int(a.threshold)) for a in BudgetAlert.objects.select_related("budget")}
    assert ("Demo compute — monthly", 100) in crossed
    assert ("Demo account — monthly", 80) in crossed


def test_original_dates_keeps_september_2024():
    seed("--original-dates")
    account = CloudAccount.objects.get(name="demo-focus")
    assert account.settings["path"] == str(DEMO_FILE)
    first = CostLineItem.objects.filter(account=account).order_by("billing_period_start").first()
    assert first.billing_period_start == datetime(2024, 9, 1, tzinfo=UTC)

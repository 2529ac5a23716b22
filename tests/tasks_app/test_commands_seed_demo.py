"""`seed_demo`: ~90 days of demo history ending yesterday, run through the real ingest, inventory, optimisation,
anomaly and budget services; idempotent, and blind to everything that is not demo data."""

import io
import stat
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import CommandError, call_command
from django.db.models import Max, Min
from django.utils import timezone

from costs_app.models import (
    AlertDelivery,
    Anomaly,
    Budget,
    BudgetAlert,
    CostDailyRollup,
    CostLineItem,
    CostTagRollup,
    Recommendation,
)
from providers_app.models import CloudAccount, Resource
from tasks_app.models import DeadLetter, RunState, TaskRun
from tests.factories import BudgetFactory, CloudAccountFactory, CostLineItemFactory

pytestmark = pytest.mark.django_db

DEMO_ACCOUNTS = {"demo-aws", "demo-azure", "demo-gcp", "demo-research"}


@pytest.fixture(autouse=True)
def import_root(settings, tmp_path):
    """The generated FOCUS files go to a folder of the test, not the checkout's imports/."""
    settings.FOCUS_IMPORT_ROOT = str(tmp_path / "imports")
    return tmp_path / "imports"


def seed(*args) -> str:
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def midnight(day) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def snapshot() -> dict:
    return {
        "accounts": sorted(CloudAccount.objects.values_list("id", "name")),
        "lines": CostLineItem.objects.count(),
        "rollups": CostDailyRollup.objects.count(),
        "tag_rollups": CostTagRollup.objects.count(),
        "resources": Resource.objects.count(),
        "anomalies": sorted(Anomaly.objects.values_list("id", "start_day", "end_day", "impact")),
        "recommendations": sorted(
            Recommendation.objects.values_list("id", "rule", "provider_resource_id", "estimated_monthly_saving")
        ),
        "budgets": sorted(Budget.objects.values_list("id", "name", "amount")),
        "alerts": sorted(BudgetAlert.objects.values_list("id", "budget_id", "threshold", "basis")),
        "runs": TaskRun.objects.count(),
        "dead_letters": DeadLetter.objects.count(),
        "users": get_user_model().objects.count(),
    }


def test_the_demo_has_90_days_ending_yesterday_in_two_teams():
    # given
    today = timezone.now().date()
    # when
    out = seed()
    # then
    accounts = {a.name: a for a in CloudAccount.objects.select_related("team")}
    assert set(accounts) == DEMO_ACCOUNTS
    assert {a.team.name for a in accounts.values()} == {"Default", "Research"}
    assert sum(1 for a in accounts.values() if a.team.name == "Default") == 3
    for account in accounts.values():
        span = CostLineItem.objects.filter(account=account).aggregate(
            first=Min("charge_period_start"), last=Max("charge_period_end")
        )
        assert span["last"] == midnight(today)  # the last charge period is yesterday
        assert span["first"] == midnight(today - timedelta(days=90))
    providers = set(CostLineItem.objects.values_list("provider_name", flat=True))
    assert providers == {"AWS", "Microsoft", "Google Cloud"}
    # the rollups were built by the ingest: they add up to the lines
    lines_total = sum(CostLineItem.objects.values_list("billed_cost", flat=True))
    assert sum(CostDailyRollup.objects.values_list("billed_cost", flat=True)) == lines_total
    assert CostTagRollup.objects.filter(tag_key="owner").exists()
    assert "done      in" in out


def test_the_demo_has_a_weekly_pattern():
    # given
    seed()
    # when: the dev sandbox's daily cost, weekdays against weekends
    costs = CostLineItem.objects.filter(resource_name="dev-sandbox").values_list("charge_period_start", "billed_cost")
    weekday = [c for start, c in costs if start.weekday() < 5]
    weekend = [c for start, c in costs if start.weekday() >= 5]
    # then
    assert sum(weekend) / len(weekend) < sum(weekday) / len(weekday) / 3


def test_the_detector_finds_the_spike_and_the_level_shift_with_their_root_causes():
    # given
    yesterday = timezone.now().date() - timedelta(days=1)
    # when
    seed()
    # then
    anomalies = list(Anomaly.objects.select_related("account"))
    assert anomalies
    assert all(a.root_causes for a in anomalies)
    spike = [a for a in anomalies if a.account.name == "demo-aws" and a.dimension_value == ""]
    assert len(spike) == 1
    assert spike[0].start_day == spike[0].end_day == yesterday - timedelta(days=2)
    assert spike[0].impact > Decimal(1000)
    # EC2 explains the spike: its cause is (within the other services' day-to-day noise) as large as the largest one,
    # whichever dimension — service, region, the sub-account, the instance — the same extra spend ranks first on a day
    causes = spike[0].root_causes
    ec2 = [c for c in causes if c["dimension"] == "service" and c["value"] == "Amazon Elastic Compute Cloud"]
    assert ec2 and Decimal(ec2[0]["impact"]) >= Decimal("0.9") * Decimal(causes[0]["impact"]), causes
    assert any(c["dimension"] == "resource" and c["value"] == "i-0f9e8d7c6b5a40099" for c in spike[0].root_causes)
    shift = [a for a in anomalies if a.account.name == "demo-azure" and a.dimension_value == ""]
    assert len(shift) == 1
    assert shift[0].day_count >= 3  # several days at the new level, one anomaly
    assert any(c.get("value") == "Azure SQL Database" for c in shift[0].root_causes)


def test_idle_and_orphaned_resources_give_recommendations_with_real_savings():
    # when
    seed()
    # then
    recommendations = {(r.rule, r.provider_resource_id): r for r in Recommendation.objects.all()}
    for key in [
        ("unattached_volumes", "vol-0bb0000000000009"),
        ("orphaned_snapshots", "snap-0dd0000000000003"),
        ("idle_resources", "eipalloc-0ee000000000004"),
    ]:
        assert key in recommendations, sorted(recommendations)
        assert recommendations[key].estimated_monthly_saving > 0
        assert recommendations[key].saving_basis == "cost_data"
    assert any(rule == "untagged_spend" for rule, _ in recommendations)  # demo-gcp's spend lacks owners
    assert sum(r.estimated_monthly_saving for r in recommendations.values()) > Decimal(100)
    # the legacy volume is terminated in the inventory, which is what orphans its snapshot
    assert Resource.objects.get(resource_id="vol-0cc0000000000007").is_terminated


def test_budgets_cross_thresholds_and_their_alert_emails_are_sent():
    # when
    seed()
    # then
    crossed = {(a.budget.name, int(a.threshold), a.basis) for a in BudgetAlert.objects.select_related("budget")}
    assert ("Demo — Default team monthly", 80, "actual") in crossed
    assert ("Demo — AWS compute monthly", 100, "actual") in crossed
    assert not any(name == "Demo — Research monthly" and basis == "actual" for name, _, basis in crossed)
    assert AlertDelivery.objects.exists()
    assert not AlertDelivery.objects.exclude(status="sent").exists()
    assert mail.outbox and all(m.to == ["finops-demo@example.com"] for m in mail.outbox)


def test_the_control_room_gets_successful_and_failed_runs_and_a_dead_letter():
    # when
    seed()
    # then
    states = set(TaskRun.objects.values_list("task_name", "state"))
    for task in ("sync_provider_cost_data", "discover_provider_resources", "detect_cost_anomalies",
                 "analyze_optimization_opportunities", "monitor_budget"):  # fmt: skip
        assert (task, RunState.SUCCESS) in states
    letter = DeadLetter.objects.get()
    assert letter.run.state == RunState.FAILURE
    assert letter.kwargs == {"account_id": CloudAccount.objects.get(name="demo-research").id}
    assert TaskRun.objects.filter(account__name="demo-aws").exists()


def test_seeding_again_changes_nothing_and_reset_rebuilds_the_same(import_root):
    # given
    first_out = seed()
    first = snapshot()
    files = {path: path.stat().st_mtime_ns for path in (import_root / "demo").glob("*.csv.gz")}
    password = first_out.split("with password ")[1].split("'")[1]
    # when
    again_out = seed()
    # then
    assert snapshot() == first
    assert "data      current" in again_out
    assert len(files) == 4
    assert {path: path.stat().st_mtime_ns for path in files} == files  # a sync sees exports it already loaded
    assert "password unchanged" in again_out
    assert get_user_model().objects.get(username="admin").check_password(password)
    # when rebuilt from scratch
    seed("--reset")
    rebuilt = snapshot()
    # then: new rows, the same demo
    for key in ("lines", "rollups", "tag_rollups", "resources", "runs", "dead_letters", "users"):
        assert rebuilt[key] == first[key], key
    assert [a[1:] for a in rebuilt["anomalies"]] == [a[1:] for a in first["anomalies"]]
    assert sorted(r[1:] for r in rebuilt["recommendations"]) == sorted(r[1:] for r in first["recommendations"])


def test_seeding_never_touches_data_that_is_not_the_demo_s():
    # given: someone's real account, its lines and budget, and a team named Default already in use
    mine = CloudAccountFactory(name="production")
    CostLineItemFactory.create_batch(3, account=mine)
    budget = BudgetFactory(name="Production monthly", amount=Decimal("100.00"))
    budget.accounts.add(mine)
    # when
    seed()
    seed("--reset")
    # then
    mine.refresh_from_db()
    assert CostLineItem.objects.filter(account=mine).count() == 3
    assert Budget.objects.filter(id=budget.id, amount=Decimal("100.00")).exists()
    assert not Recommendation.objects.filter(account=mine).exists()
    assert not Anomaly.objects.filter(account=mine).exists()


def test_days_sets_the_length_of_the_history_and_is_bounded():
    # when
    seed("--days", "40")
    # then
    first = CostLineItem.objects.aggregate(first=Min("charge_period_start"))["first"]
    assert first == midnight(timezone.now().date() - timedelta(days=40))
    with pytest.raises(CommandError, match="--days"):
        seed("--days", "10")


def test_a_generated_password_goes_to_a_private_file_when_asked(tmp_path):
    # when
    out = seed("--password-file", str(tmp_path / "admin-password"))
    # then
    password = (tmp_path / "admin-password").read_text().strip()
    assert password not in out
    assert stat.S_IMODE((tmp_path / "admin-password").stat().st_mode) == 0o600
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


def test_seeding_on_a_later_day_replaces_the_history_so_it_still_ends_yesterday():
    # given: seeded on one day
    with time_machine.travel(datetime(2026, 3, 15, 9, 30, tzinfo=UTC), tick=True):
        seed()
    first = CostLineItem.objects.count()
    # when: seeded again the next day
    with time_machine.travel(datetime(2026, 3, 16, 9, 30, tzinfo=UTC), tick=True):
        out = seed()
    # then: rebuilt, one day later, same length
    assert "removed   the previous demo data" in out
    span = CostLineItem.objects.aggregate(first=Min("charge_period_start"), last=Max("charge_period_end"))
    assert span == {"first": datetime(2025, 12, 16, tzinfo=UTC), "last": datetime(2026, 3, 16, tzinfo=UTC)}
    assert abs(CostLineItem.objects.count() - first) < 50
    assert set(CloudAccount.objects.values_list("name", flat=True)) == DEMO_ACCOUNTS
    assert Anomaly.objects.exists() and Recommendation.objects.exists()


def test_on_the_first_of_a_month_the_budgets_alert_on_the_month_just_ended():
    # when: yesterday was the last day of March
    with time_machine.travel(datetime(2026, 4, 1, 6, 0, tzinfo=UTC), tick=True):
        seed()
    # then
    alerts = BudgetAlert.objects.select_related("budget")
    assert {a.period_start for a in alerts} == {datetime(2026, 3, 1).date()}
    assert ("Demo — AWS compute monthly", 100, "actual") in {(a.budget.name, int(a.threshold), a.basis) for a in alerts}

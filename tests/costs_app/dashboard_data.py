"""A small FinOps world for the dashboards' tests, loaded the real way (FOCUS files through the importer, then the
anomaly detection and budget check services): two accounts of the team "Default" with 90 days of history ending
yesterday, a weekly pattern, a spike and a level shift (so anomalies are found), tagged spend (team=web/api),
budgets that cross thresholds, and open recommendations with real savings.
"""

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from django.utils import timezone

from costs_app.models import (
    Anomaly,
    AnomalyMonitor,
    Budget,
    CostAllocationTag,
    Recommendation,
    SavingBasis,
)
from costs_app.services.anomalies import anomalies_detect
from costs_app.services.ingest import focus_file_import
from providers_app.models import CloudAccount
from tests.costs_app.anomaly_data import Usage, focus_file, steady
from tests.factories import BudgetFactory, CloudAccountFactory

HISTORY_DAYS = 90
EC2 = "Amazon Elastic Compute Cloud"
S3 = "Amazon Simple Storage Service"
RDS = "Amazon Relational Database Service"
LAMBDA = "AWS Lambda"


@dataclass
class World:
    accounts: list[CloudAccount]
    budgets: list[Budget]
    anomalies: list[Anomaly]
    recommendations: list[Recommendation]
    first_day: date
    last_day: date


def weekly(level: float, *, seed: int, weekend: float = 0.6):
    """About `level` on weekdays, `weekend` × level on Saturdays and Sundays."""
    base = steady(level, seed=seed)
    return lambda day: round(base(day) * (weekend if day.weekday() >= 5 else 1.0), 4)


def spiked(cost, days: dict[date, float]):
    return lambda day: round(cost(day) * days.get(day, 1.0), 4)


def shifted(cost, since: date, factor: float):
    return lambda day: round(cost(day) * (factor if day >= since else 1.0), 4)


def world_build(tmp_path: Path, *, other_team_account: CloudAccount | None = None) -> World:
    today = timezone.now().date()
    last_day = today - timedelta(days=1)
    first_day = last_day - timedelta(days=HISTORY_DAYS - 1)
    spike_day = last_day - timedelta(days=2)
    shift_day = last_day - timedelta(days=4)
    CostAllocationTag.objects.get_or_create(key="team")
    prod = CloudAccountFactory(name="prod-aws")
    data = CloudAccountFactory(name="data-aws")
    usages = {
        prod: [
            Usage("i-web-1", EC2, "us-east-1", "111111111111", {"team": "web"}, weekly(120, seed=1)),
            Usage("i-api-1", EC2, "eu-west-1", "111111111111", {"team": "api"}, weekly(80, seed=2)),
            Usage("bucket-logs", S3, "us-east-1", "111111111111", {"team": "web"}, steady(25, seed=3)),
            Usage(
                "db-main", RDS, "us-east-1", "222222222222", {"team": "api"},
                spiked(steady(60, seed=4), {spike_day: 4.0}),
            ),
            Usage("fn-batch", LAMBDA, "eu-west-1", "222222222222", {}, steady(8, seed=5)),
        ],
        data: [
            Usage("i-etl-1", EC2, "us-west-2", "333333333333", {"team": "data"},
                  shifted(weekly(90, seed=6), shift_day, 2.2)),
            Usage("bucket-lake", S3, "us-west-2", "333333333333", {"team": "data"}, steady(40, seed=7)),
        ],
    }  # fmt: skip
    if other_team_account is not None:
        usages[other_team_account] = [Usage("i-secret", EC2, "ap-south-1", "999999999999", {}, steady(500, seed=9))]
    for account, account_usages in usages.items():
        path = focus_file(tmp_path / f"{account.name}.csv", first_day, last_day, account_usages)
        focus_file_import(account=account, path=path)

    AnomalyMonitor.objects.get_or_create(name="Accounts", defaults={"dimension": "account"})
    AnomalyMonitor.objects.get_or_create(name="Services per account", defaults={"dimension": "service"})
    anomalies_detect(now=timezone.now())

    month_start = today.replace(day=1)
    days_so_far = max(1, (today - month_start).days)
    budgets = [
        BudgetFactory(name="Production — monthly", account=prod, amount=Decimal(round(290 * days_so_far * 1.1, 0))),
        BudgetFactory(
            name="Data compute — monthly",
            account=data,
            service_names=[EC2],
            amount=Decimal(round(90 * days_so_far * 1.6, 0)),
        ),
    ]
    recommendations = [
        Recommendation.objects.create(
            account=account, rule=rule, provider_resource_id=resource, title=title, currency="USD",
            estimated_monthly_saving=Decimal(saving), monthly_cost=Decimal(saving) * 2,
            saving_basis=SavingBasis.COST_DATA, details={"why": "test"},
        )
        for account, rule, resource, title, saving in (
            (prod, "idle_instances", "i-web-1", "Stop idle instance i-web-1", "864.00"),
            (prod, "unattached_volumes", "vol-1", "Delete unattached volume vol-1", "48.50"),
            (data, "idle_instances", "i-etl-1", "Stop idle instance i-etl-1", "410.00"),
            (data, "old_snapshots", "snap-7", "Delete old snapshot snap-7", "12.25"),
        )
    ]  # fmt: skip
    return World(
        accounts=[prod, data],
        budgets=budgets,
        anomalies=list(Anomaly.objects.filter(account__in=[prod, data]).order_by("-impact")),
        recommendations=recommendations,
        first_day=first_day,
        last_day=last_day,
    )

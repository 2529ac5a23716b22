"""A budget's spend is the same whether its closed months are read from the monthly rollups or day by day.

Budgets read the whole months of a period from CostMonthRollup / CostTagMonthRollup (kept by triggers) and the other
days from the daily and tag rollups. Against a year of random daily and tag rollups (other accounts, sub-accounts,
services, regions, currencies and amounts than the code's own tests), every budget shape × period — calendar month,
quarter, year, fixed ranges that start and end mid-month, the late period of last year — gets exactly the sum of
its rollup rows computed here in Python.
"""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.db import connection

from costs_app.models import Budget, BudgetPeriod, CostAllocationTag, CostDailyRollup, CostTagRollup
from costs_app.services.budgets import budgets_spend, whole_months
from tests.factories import BudgetFactory, CloudAccountFactory

pytestmark = pytest.mark.django_db

FIRST, LAST = date(2023, 10, 1), date(2024, 12, 31)
SUB_ACCOUNTS, SERVICES, REGIONS = ["s1", "s2", "s3", ""], ["EC2", "S3", "RDS"], ["us-east-1", "eu-west-1", ""]
TEAMS = ["web", "api", ""]


@pytest.fixture
def year_of_rollups(db):
    """Random daily and tag rollups of two accounts for 15 months (about a third of the combinations each day)."""
    rng = np.random.default_rng(20261206)
    accounts = [CloudAccountFactory(name="a"), CloudAccountFactory(name="b")]
    CostAllocationTag.objects.create(key="team", is_active=True)
    daily, tags = [], []
    day = FIRST
    while day <= LAST:
        period = datetime(day.year, day.month, 1, tzinfo=UTC)
        for account in accounts:
            for sub in SUB_ACCOUNTS:
                for service in SERVICES:
                    region = REGIONS[rng.integers(len(REGIONS))]
                    if rng.random() > 0.35:
                        continue
                    currency = "EUR" if rng.random() < 0.1 else "USD"
                    amount = Decimal(str(round(float(rng.lognormal(2, 1.5)), int(rng.integers(0, 7)))))
                    common = {"account": account, "day": day, "service_name": service, "sub_account_id": sub,
                              "region_id": region, "billing_currency": currency, "billed_cost": amount,
                              "line_count": 1}  # fmt: skip
                    daily.append(CostDailyRollup(billing_period_start=period, **common))
                    team = TEAMS[rng.integers(len(TEAMS))]
                    tags.append(CostTagRollup(tag_key="team", tag_value=team, **common))
        day += timedelta(days=1)
    CostDailyRollup.objects.bulk_create(daily, batch_size=5000)
    CostTagRollup.objects.bulk_create(tags, batch_size=5000)
    return {"a": accounts[0], "b": accounts[1], "daily": daily, "tags": tags}


SHAPES = [
    {},
    {"accounts": ["a"]},
    {"accounts": ["a", "b"], "service_names": ["S3", "RDS"]},
    {"sub_account_ids": ["s1", "s3"]},
    {"accounts": ["b"], "sub_account_ids": [""], "region_ids": ["eu-west-1"]},
    {"region_ids": ["us-east-1"], "currency": "EUR"},
    {"tag_key": "team", "tag_values": ["web"]},
    {"tag_key": "team", "tag_values": ["api", ""], "accounts": ["a"], "sub_account_ids": ["s2"]},
]
PERIODS = [
    {"period": BudgetPeriod.MONTHLY},
    {"period": BudgetPeriod.QUARTERLY},
    {"period": BudgetPeriod.ANNUAL},
    {"period": BudgetPeriod.CUSTOM, "start_date": date(2023, 11, 15), "end_date": date(2024, 8, 10)},
    {"period": BudgetPeriod.CUSTOM, "start_date": date(2024, 2, 29), "end_date": date(2024, 9, 30)},
]


def expected_actual(spend, rows, accounts) -> Decimal:
    budget = spend.budget
    return sum(
        (
            row.billed_cost
            for row in rows
            if spend.period_start <= row.day <= spend.last_day
            and row.billing_currency == budget.currency
            and (not accounts or row.account_id in accounts)
            and (not budget.sub_account_ids or row.sub_account_id in budget.sub_account_ids)
            and (not budget.service_names or row.service_name in budget.service_names)
            and (not budget.region_ids or row.region_id in budget.region_ids)
            and (not budget.tag_key or row.tag_value in budget.tag_values)
        ),
        Decimal(0),
    )


def make_budgets(data) -> list[Budget]:
    budgets = []
    for shape in SHAPES:
        for period in PERIODS:
            scope = dict(shape)
            accounts = [data[name] for name in scope.pop("accounts", [])]
            budgets.append(BudgetFactory(accounts=accounts, **scope, **period))
    return list(Budget.objects.prefetch_related("accounts").filter(id__in=[b.id for b in budgets]))


@pytest.mark.parametrize("today", [date(2024, 9, 20), date(2025, 1, 2)])
def test_every_budget_shape_and_period_gets_the_sum_of_its_rollup_rows(year_of_rollups, today):
    # given
    budgets = make_budgets(year_of_rollups)
    # when
    spends = budgets_spend(budgets, today=today)
    # then: every period checked (the late period of last year too on 2 January) has its rows' exact sum
    assert len(spends) >= len(budgets) - 2 * len(SHAPES)
    for spend in spends:
        rows = year_of_rollups["tags" if spend.budget.tag_key else "daily"]
        accounts = {account.id for account in spend.budget.accounts.all()}
        assert spend.actual == expected_actual(spend, rows, accounts), (spend.budget.name, spend.period_start)
    assert any(s.actual > 0 for s in spends) and any(
        s.period_end - s.period_start > timedelta(days=300) for s in spends
    )


def test_the_closed_months_are_read_from_the_monthly_rollups(year_of_rollups):
    # given: an annual budget on 20 September, and its value
    [annual] = [b for b in make_budgets(year_of_rollups) if b.period == BudgetPeriod.ANNUAL and not b.tag_key][:1]
    before = budgets_spend([annual], today=date(2024, 9, 20))[0].actual
    # when: the monthly rollups of March 2024 (USD) are made wrong behind the triggers' back
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE costs_app_costmonthrollup SET billed_cost = billed_cost + 1"
            " WHERE month = '2024-03-01' AND billing_currency = 'USD'"
        )
        changed = cursor.rowcount
    # then: the unscoped USD budget's spend moved by exactly that much (March was not read day by day)
    after = budgets_spend([annual], today=date(2024, 9, 20))[0].actual
    assert changed > 0 and after - before == changed


def test_whole_months_skip_the_daily_zone_and_months_a_boundary_cuts():
    # given: a span from mid-October to December, a forecast window in November, a period boundary on 10 February
    span = (date(2023, 10, 15), date(2024, 3, 31))
    breaks = [date(2023, 10, 15), date(2024, 1, 1), date(2024, 2, 10)]
    # when
    months, ranges = whole_months(*span, daily_from=date(2023, 11, 20), daily_to=date(2023, 11, 30), breaks=breaks)
    # then: October is partial, November holds the window, February is cut; December, January and March are whole
    assert months == [date(2023, 12, 1), date(2024, 1, 1), date(2024, 3, 1)]
    assert ranges == [(date(2023, 10, 15), date(2023, 11, 30)), (date(2024, 2, 1), date(2024, 2, 29))]

"""Optimisation rules over FOCUS cost lines and the inventory: each fires on waste built for it, and only there."""

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from costs_app.models import CostDailyRollup, Recommendation, RecommendationStatus
from costs_app.services.optimization import RULES, recommendations_refresh
from tests.factories import CloudAccountFactory, CostLineItemFactory, ResourceFactory

pytestmark = pytest.mark.django_db

LAST_DAY = date(2024, 9, 30)
NOW = datetime(2024, 10, 2, 4, 0, tzinfo=UTC)  # data arrives late: the last data day is two days back
MONTH = Decimal("30.4375")


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def billed(account, days, cost: str, **columns):
    """One cost line per day in `days` (date objects), plus the rollup day that tells the window where data ends."""
    for day in days:
        CostLineItemFactory(
            account=account,
            billed_cost=Decimal(cost),
            charge_period_start=day_start(day),
            charge_period_end=day_start(day) + timedelta(days=1),
            billing_period_start=datetime(day.year, day.month, 1, tzinfo=UTC),
            **columns,
        )
    CostDailyRollup.objects.get_or_create(
        account=account, day=LAST_DAY, billing_currency="USD", defaults={"billing_period_start": day_start(LAST_DAY)}
    )


def last(n: int) -> list[date]:
    return [LAST_DAY - timedelta(days=i) for i in range(n)][::-1]


def recs(rule: str) -> dict[str, Recommendation]:
    return {r.provider_resource_id: r for r in Recommendation.objects.filter(rule=rule)}


def test_catalogue_rules_have_names_and_descriptions():
    assert len({rule.name for rule in RULES}) == len(RULES) >= 3
    assert all(rule.description and rule.closed_reason for rule in RULES)


def test_billed_after_termination_flags_terminated_and_stale_resources_still_billed():
    # given
    account = CloudAccountFactory()
    gone = ResourceFactory(
        account=account, resource_id="i-gone", is_terminated=True, terminated_at=day_start(date(2024, 9, 21))
    )
    stale = ResourceFactory(account=account, resource_id="vol-stale", last_seen=NOW - timedelta(days=30))
    ResourceFactory(account=account, resource_id="i-alive", last_seen=NOW)
    ResourceFactory(
        account=account, resource_id="i-cleanly-gone", is_terminated=True, terminated_at=day_start(date(2024, 9, 10))
    )
    storage = {"service_category": "Storage", "service_name": "Amazon EBS"}
    billed(account, last(30), "10", resource_id="i-gone", resource_name="web-1")
    billed(account, last(30), "4", resource_id="vol-stale", **storage)
    billed(account, last(30), "10", resource_id="i-alive")
    billed(account, [date(2024, 9, 1), date(2024, 9, 9)], "10", resource_id="i-cleanly-gone")
    # when
    result = recommendations_refresh(now=NOW)
    # then
    found = recs("billed_after_termination")
    assert set(found) == {"i-gone", "vol-stale"}
    assert result.found["billed_after_termination"] == 2
    # 10 days billed after termination (21st..30th) at 10/day: a run rate of 10/day
    assert found["i-gone"].estimated_monthly_saving == cents(10 * MONTH)
    assert found["i-gone"].details["cost_since"] == "100.00"
    assert found["i-gone"].resource_id == gone.id
    assert "web-1" in found["i-gone"].title and "terminated 2024-09-21" in found["i-gone"].title
    assert found["vol-stale"].resource_id == stale.id
    assert found["vol-stale"].details["inventory_state"] == "not seen"
    assert found["vol-stale"].estimated_monthly_saving == cents(4 * MONTH)
    assert found["vol-stale"].currency == "USD"


def test_idle_resources_flags_cost_without_consumption_only():
    # given
    account = CloudAccountFactory()
    cols = {"service_category": "Networking", "service_name": "Amazon VPC", "consumed_unit": "Hours"}
    billed(account, last(30), "3.60", resource_id="eip-idle", consumed_quantity=Decimal(0), **cols)
    billed(account, last(30), "3.60", resource_id="eip-used", consumed_quantity=Decimal(24), **cols)
    billed(account, last(30), "3.60", resource_id="eip-unknown", **cols)  # provider reports no quantity
    billed(account, last(30), "0", resource_id="eip-free", consumed_quantity=Decimal(0), **cols)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("idle_resources")
    assert set(found) == {"eip-idle"}
    assert found["eip-idle"].estimated_monthly_saving == cents(Decimal("3.60") * MONTH)
    assert found["eip-idle"].details["cost_in_window"] == "108.00"
    assert found["eip-idle"].resource is None  # not in the inventory (yet): still recommended by its provider id


def test_commitment_coverage_commits_to_the_steady_on_demand_floor():
    # given: on-demand EC2 in us-east-1 every day, at least 20/day; a second region covered by a savings plan;
    # a third region with on-demand only on some days (no steady floor)
    account = CloudAccountFactory()
    for i, day in enumerate(last(30)):
        billed(account, [day], "20" if i % 3 == 0 else "35", resource_id=f"i-od-{i % 4}")
    billed(
        account,
        last(30),
        "50",
        region_id="eu-west-1",
        commitment_discount_id="sp-1",
        commitment_discount_status="Used",
        pricing_category="Committed",
    )
    billed(account, last(30)[::2], "50", region_id="us-west-2")
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("commitment_coverage")
    assert set(found) == {"commitment:Amazon Elastic Compute Cloud:us-east-1"}
    rec = found["commitment:Amazon Elastic Compute Cloud:us-east-1"]
    assert rec.details["daily_on_demand_floor"] == "20.00"
    assert rec.details["suggested_hourly_commitment"] == "0.83"
    assert rec.estimated_monthly_saving == cents(20 * MONTH * Decimal("0.25"))


def test_unused_commitment_counts_only_the_unused_part():
    # given
    account = CloudAccountFactory()
    commitment = {
        "commitment_discount_id": "arn:ri-1",
        "commitment_discount_name": "RI m5",
        "pricing_category": "Committed",
    }
    billed(account, last(30), "6", commitment_discount_status="Unused", **commitment)
    billed(account, last(30), "18", commitment_discount_status="Used", **commitment)
    billed(account, last(30), "18", commitment_discount_id="arn:ri-2", commitment_discount_status="Used")
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("unused_commitment")
    assert set(found) == {"arn:ri-1"}
    assert found["arn:ri-1"].estimated_monthly_saving == cents(6 * MONTH)


def test_no_waste_no_recommendations():
    # given: used resources, in the inventory, billed on varying on-demand days only
    account = CloudAccountFactory()
    ResourceFactory(account=account, resource_id="i-1", last_seen=NOW)
    billed(account, last(20), "10", resource_id="i-1", consumed_quantity=Decimal(24))
    # when
    result = recommendations_refresh(now=NOW)
    # then
    assert result.accounts == 1
    assert sum(result.found.values()) == 0
    assert Recommendation.objects.count() == 0


def test_refresh_updates_not_duplicates_and_closes_what_no_longer_applies():
    # given
    account = CloudAccountFactory()
    cols = {"service_category": "Storage", "consumed_quantity": Decimal(0)}
    billed(account, last(30), "5", resource_id="vol-a", **cols)
    billed(account, last(30), "5", resource_id="vol-b", **cols)
    billed(account, last(30), "5", resource_id="vol-c", **cols)
    first = recommendations_refresh(now=NOW)
    Recommendation.objects.filter(provider_resource_id="vol-b").update(status=RecommendationStatus.DISMISSED)
    # vol-a and vol-b get used again; vol-c stays idle
    account.cost_lines.filter(resource_id__in=["vol-a", "vol-b"], charge_period_start__gte=day_start(LAST_DAY)).update(
        consumed_quantity=Decimal(5)
    )
    # when
    second = recommendations_refresh(now=NOW)
    third = recommendations_refresh(now=NOW)
    # then
    assert (first.created, second.created, second.updated, second.closed) == (3, 0, 1, 1)
    assert (third.created, third.updated, third.closed) == (0, 1, 0)
    assert Recommendation.objects.count() == 3
    statuses = dict(Recommendation.objects.values_list("provider_resource_id", "status"))
    assert statuses == {
        "vol-a": RecommendationStatus.CLOSED,
        "vol-b": RecommendationStatus.DISMISSED,
        "vol-c": RecommendationStatus.OPEN,
    }
    closed = Recommendation.objects.get(provider_resource_id="vol-a")
    assert closed.status_reason.startswith("No longer applies (2024-10-02): usage is consumed again")


def test_closed_recommendation_reopens_when_the_waste_returns_and_scope_is_respected():
    # given
    account, other = CloudAccountFactory(), CloudAccountFactory()
    billed(account, last(30), "5", resource_id="vol-a", service_category="Storage", consumed_quantity=Decimal(0))
    billed(other, last(30), "5", resource_id="vol-z", service_category="Storage", consumed_quantity=Decimal(0))
    recommendations_refresh(account_id=account.id, now=NOW)
    Recommendation.objects.filter(provider_resource_id="vol-a").update(
        status=RecommendationStatus.CLOSED, status_reason="no longer applies"
    )
    # when
    result = recommendations_refresh(account_id=account.id, now=NOW)
    # then
    assert result.accounts == 1
    rec = Recommendation.objects.get(provider_resource_id="vol-a")
    assert (rec.status, rec.status_reason) == (RecommendationStatus.OPEN, "")
    assert not Recommendation.objects.filter(account=other).exists()
    assert result.as_dict()["monthly_saving"] == {"USD": str(cents(5 * MONTH))}

"""The dashboards' JSON (/api/v1/dashboards/...): sums that match the rollups, team scope, bounded inputs, and a
fixed number of queries whatever the amount of data."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from costs_app.models import CostDailyRollup, Recommendation, RecommendationStatus
from providers_app.models import Role, Team
from providers_app.services.teams import team_member_set
from tests.costs_app.dashboard_data import EC2, world_build
from tests.factories import CloudAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

SPEND = "/api/v1/dashboards/spend/"


@pytest.fixture
def world(tmp_path, user):
    outsider = CloudAccountFactory(name="other-team", team=Team.objects.create(name="Other"))
    return world_build(tmp_path, other_team_account=outsider)


def test_spend_is_the_rollups_sum_stacked_by_the_top_services_with_the_rest_as_other(viewer_client, world):
    # given
    params = {"date_from": world.first_day, "date_to": world.last_day, "top": 2}
    # when
    answer = viewer_client.get(SPEND, params)
    # then
    assert answer.status_code == 200, answer.content
    body = answer.json()
    mine = CostDailyRollup.objects.filter(account__in=world.accounts)
    expected_total = mine.aggregate(total=Sum("billed_cost"))["total"]
    assert Decimal(body["total"]) == expected_total.quantize(Decimal("0.01"))
    assert body["currency"] == "USD" and len(body["days"]) == 90
    assert [s["key"] for s in body["series"]] == [EC2, "Amazon Simple Storage Service", "(other)"]
    ec2 = mine.filter(service_name=EC2, day=world.last_day).aggregate(total=Sum("billed_cost"))["total"]
    assert Decimal(body["series"][0]["values"][-1]) == ec2.quantize(Decimal("0.01"))
    stacked = sum(Decimal(s["values"][10]) for s in body["series"])
    day_total = mine.filter(day=world.first_day + timedelta(days=10)).aggregate(total=Sum("billed_cost"))["total"]
    assert abs(stacked - day_total) <= Decimal("0.03")  # each series rounded to the cent
    # the other team's account (500 a day) is in no figure
    assert "other-team" not in answer.content.decode()
    assert [row["label"] for row in body["top"]["accounts"]] == ["prod-aws", "data-aws"]
    tags = viewer_client.get(f"{SPEND}tags/", params).json()
    assert tags["currency"] == "USD" and len(tags["tags"]) == 2  # top N everywhere
    wider = viewer_client.get(f"{SPEND}tags/", {**params, "top": 5}).json()
    assert {row["key"] for row in wider["tags"]} == {"team=web", "team=api", "team=data"}
    assert sum(Decimal(row["total"]) for row in wider["tags"]) < expected_total  # the untagged spend is left out


def test_spend_filters_narrow_to_an_account_a_service_a_region_and_a_tag(viewer_client, world):
    prod, data = world.accounts
    base = {"date_from": world.first_day, "date_to": world.last_day}
    by_account = viewer_client.get(SPEND, {**base, "account": data.pk, "group_by": "account"}).json()
    assert [s["label"] for s in by_account["series"]] == ["data-aws"]
    region = viewer_client.get(SPEND, {**base, "region": "eu-west-1"}).json()
    assert {s["key"] for s in region["series"]} == {EC2, "AWS Lambda"}
    tagged = viewer_client.get(SPEND, {**base, "tag": "team=web"}).json()
    assert {s["key"] for s in tagged["series"]} == {EC2, "Amazon Simple Storage Service"}
    assert [row["label"] for row in tagged["top"]["regions"]] == ["us-east-1"]
    assert [row["key"] for row in viewer_client.get(f"{SPEND}tags/", {**base, "tag": "team=web"}).json()["tags"]] == [
        "team=web"
    ]


def test_month_to_date_compares_the_same_days_of_last_month(viewer_client, world):
    answer = viewer_client.get(SPEND, {"date_to": world.last_day}).json()
    mtd = answer["month_to_date"]
    assert mtd["this_month"]["date_from"] == world.last_day.replace(day=1).isoformat()
    last_from = mtd["last_month"]["date_from"]
    mine = CostDailyRollup.objects.filter(account__in=world.accounts)
    expected = mine.filter(day__range=(last_from, mtd["last_month"]["date_to"])).aggregate(t=Sum("billed_cost"))["t"]
    assert Decimal(mtd["last_month"]["total"]) == expected.quantize(Decimal("0.01"))


@pytest.mark.parametrize(
    "params",
    [
        {"date_from": "2020-01-01", "date_to": "2021-12-31"},  # 731 days
        {"date_from": "2026-02-01", "date_to": "2026-01-01"},
        {"date_to": "1999-12-31"},
        {"top": 0},
        {"top": 21},
        {"tag": "novalue"},
        {"currency": "usd1"},
        {"group_by": "region"},
        {"account": 0},
        {"service": "x" * 300},
    ],
)
def test_spend_inputs_are_bounded(viewer_client, params):
    assert viewer_client.get(SPEND, params).status_code == 400


def test_the_number_of_queries_does_not_grow_with_the_data(viewer_client, world):
    with CaptureQueriesContext(connection) as queries:
        assert viewer_client.get(SPEND, {"date_from": world.first_day, "date_to": world.last_day}).status_code == 200
    assert len(queries) <= 12, [q["sql"][:120] for q in queries]


def test_budgets_show_actual_forecast_interval_and_thresholds(viewer_client, world):
    answer = viewer_client.get("/api/v1/dashboards/budgets/")
    assert answer.status_code == 200, answer.content
    rows = {b["name"]: b for b in answer.json()["budgets"]}
    prod = rows["Production — monthly"]
    assert Decimal(prod["actual"]) > 0
    assert Decimal(prod["forecast_low"]) <= Decimal(prod["forecast"]) <= Decimal(prod["forecast_high"])
    assert [t["label"] for t in prod["thresholds"]] == ["50% actual", "80% actual", "100% actual", "100% forecasted"]
    burn = viewer_client.get(f"/api/v1/dashboards/budgets/{world.budgets[0].pk}/burn/").json()
    cumulative = [Decimal(v) for v in burn["cumulative"] if v is not None]
    assert cumulative == sorted(cumulative) and cumulative[-1] == Decimal(prod["actual"])
    assert burn["forecast_line"][-1] == prod["forecast"] and burn["high_line"][-1] == prod["forecast_high"]
    assert burn["days"][0] == prod["period_start"] and burn["days"][-1] == prod["period_end"]


def test_an_anomaly_series_has_its_band_and_marks_its_days(viewer_client, world):
    assert world.anomalies, "the spike and the level shift are anomalies"
    anomaly = world.anomalies[0]
    answer = viewer_client.get(f"/api/v1/dashboards/anomalies/{anomaly.pk}/series/")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    marked = [day for day, flag in zip(body["days"], body["anomalous"], strict=True) if flag]
    assert marked and marked[0] == anomaly.start_day.isoformat()
    for i, day in enumerate(body["days"]):
        if day in marked:
            assert Decimal(body["actual"][i]) > Decimal(body["upper"][i])
        assert Decimal(body["lower"][i]) <= Decimal(body["expected"][i]) <= Decimal(body["upper"][i])
    assert body["root_causes"], "a root cause is named"


def test_savings_by_rule_and_account_with_totals(viewer_client, world):
    body = viewer_client.get("/api/v1/dashboards/savings/").json()
    assert body["totals"] == [{"currency": "USD", "total": "1334.75", "count": 4}]
    assert body["by_rule"][0] == {
        "rule": "idle_instances", "label": "Idle instances", "currency": "USD", "total": "1274.00", "count": 2,
    }  # fmt: skip
    assert [(r["label"], r["total"]) for r in body["by_account"]] == [("prod-aws", "912.50"), ("data-aws", "422.25")]


def test_another_teams_ids_are_not_found_and_a_user_without_permission_is_refused(world, user):
    stranger = UserFactory(username="stranger")
    team_member_set(team=Team.objects.create(name="Elsewhere"), user=stranger, role=Role.VIEWER)
    client = APIClient()
    client.force_authenticate(stranger)
    assert client.get(f"/api/v1/dashboards/budgets/{world.budgets[0].pk}/burn/").status_code == 404
    assert client.get(f"/api/v1/dashboards/anomalies/{world.anomalies[0].pk}/series/").status_code == 404
    assert client.get(SPEND).json()["total"] == "0.00"
    nobody = APIClient()
    nobody.force_authenticate(UserFactory(username="no-perms"))
    assert nobody.get(SPEND).status_code == 403
    assert APIClient().get(SPEND).status_code in (401, 403)
    assert Recommendation.objects.filter(status=RecommendationStatus.OPEN).count() == 4


def test_a_long_period_is_drawn_by_month_from_the_monthly_rollups_with_the_same_sums(viewer_client, world):
    # given: 120 days, more than 92: by month; the world's 90 days of data end yesterday, mid-month or not
    date_from, date_to = world.last_day - timedelta(days=119), world.last_day
    mine = CostDailyRollup.objects.filter(account__in=world.accounts, day__range=(date_from, date_to))
    prod, _ = world.accounts
    for params, rows in (
        ({}, mine),
        ({"account": prod.pk, "service": EC2}, mine.filter(account=prod, service_name=EC2)),
        ({"region": "eu-west-1", "group_by": "account"}, mine.filter(region_id="eu-west-1")),
        ({"sub_account": "123456789012"}, mine.filter(sub_account_id="123456789012")),  # not in the monthly rollups
    ):
        # when
        with CaptureQueriesContext(connection) as queries:
            answer = viewer_client.get(SPEND, {"date_from": date_from, "date_to": date_to, "top": 20, **params})
        # then
        assert answer.status_code == 200, answer.content
        body = answer.json()
        months = sorted({d.replace(day=1) for d in (date_from, date_to)} | {d.replace(day=1) for d in
                        (date_from + timedelta(days=i) for i in range(120))})  # fmt: skip
        assert body["granularity"] == "month" and body["days"] == [m.isoformat() for m in months], params
        expected = {}
        for day, total in rows.values_list("day", "billed_cost"):
            expected[day.replace(day=1)] = expected.get(day.replace(day=1), Decimal(0)) + total
        drawn = [sum(Decimal(s["values"][i]) for s in body["series"]) for i in range(len(months))]
        for month, value in zip(months, drawn, strict=True):
            assert abs(value - expected.get(month, Decimal(0))) <= Decimal("0.05"), (params, month)
        assert Decimal(body["total"]) == sum(expected.values(), Decimal(0)).quantize(Decimal("0.01")), params
        assert "other-team" not in answer.content.decode()
        reads_months = any("costs_app_costmonthrollup" in q["sql"] for q in queries.captured_queries)
        assert reads_months == ("sub_account" not in params), params

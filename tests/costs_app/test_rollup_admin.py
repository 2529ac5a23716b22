"""The daily and tag rollup lists stay bounded at millions of rows: one month per page (the latest by default), the
user's accounts and the cost allocation tags as filter choices (small tables, no DISTINCT over the rollups), sorts on
the day only, an estimated count past a bound, no facet counts, and the page says so. Asserted on the SQL run."""

import re
from datetime import UTC, date, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from costs_app.models import CostAllocationTag, CostDailyRollup, CostTagRollup
from finops.admin_paging import EstimatedCountPaginator
from tests.factories import CloudAccountFactory, TeamFactory

DAILY = reverse("admin:costs_app_costdailyrollup_changelist")
TAGS = reverse("admin:costs_app_costtagrollup_changelist")
AUGUST, SEPTEMBER = datetime(2024, 8, 1, tzinfo=UTC), datetime(2024, 9, 1, tzinfo=UTC)


@pytest.fixture
def rollups(db):
    big, small = CloudAccountFactory(name="acct-big"), CloudAccountFactory(name="acct-small")
    CostAllocationTag.objects.create(key="env")
    CostAllocationTag.objects.create(key="team")
    for account, period, services in ((big, AUGUST, ["svc-august"]), (big, SEPTEMBER, ["svc-a", "svc-b", "svc-c"])):
        for day in (3, 17):
            for service in services:
                CostDailyRollup.objects.create(
                    account=account,
                    day=date(period.year, period.month, day),
                    billing_period_start=period,
                    service_name=service,
                    billing_currency="USD",
                )
                for key in ("env", "team"):
                    CostTagRollup.objects.create(
                        account=account,
                        day=date(period.year, period.month, day),
                        tag_key=key,
                        tag_value=f"{key}-{service}",
                        service_name=service,
                        billing_currency="USD",
                    )
    CostDailyRollup.objects.create(
        account=small, day=date(2024, 9, 5), billing_period_start=SEPTEMBER, service_name="svc-small"
    )
    return big, small


@pytest.fixture
def page(client, platform_admin):
    client.force_login(platform_admin)

    def get(url: str):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200, response.status_code
        sqls = [q["sql"] for q in queries.captured_queries if "rollup" in q["sql"]]
        return response.content.decode(), sqls

    return get


def results(html: str) -> str:
    return html.split('id="result_list"')[1].split("</table>")[0] if 'id="result_list"' in html else ""


def assert_bounded_to(sqls: list[str], start: str, end: str) -> None:
    assert sqls, "the page read no rollups"
    for sql in sqls:
        if "costs_app_costdailyrollup" not in sql and "costs_app_costtagrollup" not in sql:
            continue
        if "billing_period_start" in sql and "max(" in sql:  # the month choices: selectors.billing_periods_for
            continue
        assert "DISTINCT" not in sql.upper(), sql
        where = sql.split(" WHERE ", 1)[1] if " WHERE " in sql else ""
        assert f"\"day\" >= '{start}'::date" in where and f"\"day\" < '{end}'::date" in where, sql


def test_the_daily_list_shows_the_latest_month_by_default_bounded_and_says_so(rollups, page):
    # when
    html, sqls = page(DAILY)
    # then
    rows = results(html)
    assert "svc-a" in rows and "svc-small" in rows and "svc-august" not in rows
    assert_bounded_to(sqls, "2024-09-01", "2024-10-01")
    assert re.search(r"\b7 cost daily rollups\b", html)
    assert "One month at a time (the latest by default" in html and "no per-option counts" in html
    filters = html.split('id="changelist-filter"')[1]
    assert "?period=2024-08" in filters and "acct-small" in filters
    assert "_facets=True" not in html  # no "Show counts" link


def test_daily_filters_sorts_search_and_facets_stay_bounded(rollups, page):
    big, _ = rollups
    for query in (
        "?period=2024-08",
        f"?period=2024-08&account__id__exact={big.pk}",
        "?period=2024-08&o=1",  # the account column: not sortable, ignored
        "?period=2024-08&o=-0",
        "?period=2024-08&q=svc-august",
        "?period=2024-08&_facets=True",
    ):
        # when
        html, sqls = page(DAILY + query)
        # then
        assert "svc-august" in results(html) and "svc-a<" not in results(html), query
        assert_bounded_to(sqls, "2024-08-01", "2024-09-01")
        assert not any("FILTER (WHERE" in sql for sql in sqls), (query, "a facet count was run")
        assert all('"account_id" ASC' not in sql and '"account_id" DESC' not in sql for sql in sqls), query


def test_the_tag_list_reads_one_month_of_one_tag_key(rollups, page):
    # when: by default the latest month and the first cost allocation tag (env)
    html, sqls = page(TAGS)
    # then
    assert "env-svc-a" in html and "team-svc-a" not in html and "env-svc-august" not in html
    assert_bounded_to(sqls, "2024-09-01", "2024-10-01")
    assert all("\"tag_key\" = 'env'" in sql for sql in sqls if "costs_app_costtagrollup" in sql)
    # when: another key and month
    html, sqls = page(TAGS + "?tag_key=team&period=2024-08&_facets=True")
    assert "team-svc-august" in html and "env-svc-august" not in html
    assert_bounded_to(sqls, "2024-08-01", "2024-09-01")
    assert not any("FILTER (WHERE" in sql for sql in sqls)


def test_the_rollup_count_is_an_estimate_past_the_bound(rollups, page, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 3)
    html, sqls = page(DAILY)
    assert re.search(r"about \d+ cost daily rollups \(an estimate", html)
    counts = [sql for sql in sqls if "COUNT(" in sql.upper()]
    assert counts and all("LIMIT 4" in sql for sql in counts), counts


def test_a_team_user_sees_their_accounts_only(rollups, client, user):
    big, small = rollups
    big.team = TeamFactory(name="other")
    big.save()
    user.is_staff = True
    user.save()
    client.force_login(user)
    html = client.get(DAILY).content.decode()
    assert "svc-small" in results(html) and "svc-a" not in html and "acct-big" not in html


def test_the_service_filter_lists_the_users_services_from_the_monthly_rollups(rollups, page, client, user):
    big, _ = rollups
    # when
    html, sqls = page(DAILY + "?period=2024-09&service=svc-b")
    # then: choices from the monthly rollups (kept by triggers), the list narrowed to the service
    filters = html.split('id="changelist-filter"')[1]
    assert all(f"service={name}" in filters for name in ("svc-a", "svc-b", "svc-august", "svc-small"))
    assert "svc-b" in results(html) and "svc-a<" not in results(html)
    assert any("costs_app_costmonthrollup" in sql for sql in sqls)
    # a team user is offered only their accounts' services
    big.team = TeamFactory(name="other")
    big.save()
    user.is_staff = True
    user.save()
    client.force_login(user)
    filters = client.get(DAILY).content.decode().split('id="changelist-filter"')[1]
    assert "service=svc-small" in filters and "service=svc-a" not in filters

"""The cost line list stays bounded on a huge table: one billing period per page (the latest by default), sorts on
indexes only, an estimated count past a bound, no facet counts. Asserted on the SQL the page runs."""

import re
from datetime import UTC, date, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from costs_app.models import CostDailyRollup, CostLineItem
from costs_app.selectors import billing_periods_for
from finops.admin_paging import EstimatedCountPaginator
from tests.factories import CloudAccountFactory, CostLineItemFactory, TeamFactory

LIST = reverse("admin:costs_app_costlineitem_changelist")
AUGUST, SEPTEMBER = datetime(2024, 8, 1, tzinfo=UTC), datetime(2024, 9, 1, tzinfo=UTC)


def month_of_lines(account, period: datetime, count: int, resource: str) -> None:
    end = datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)
    CostLineItemFactory.create_batch(
        count,
        account=account,
        resource_id=resource,
        billing_period_start=period,
        billing_period_end=end,
        charge_period_start=period.replace(day=10),
        charge_period_end=period.replace(day=11),
    )
    CostDailyRollup.objects.create(
        account=account, day=date(period.year, period.month, 10), billing_period_start=period, billing_currency="USD"
    )


@pytest.fixture
def lines(db):
    big, small = CloudAccountFactory(name="acct-big"), CloudAccountFactory(name="acct-small")
    month_of_lines(big, AUGUST, 2, "i-august")
    month_of_lines(big, SEPTEMBER, 6, "i-september-big")
    month_of_lines(small, SEPTEMBER, 2, "i-september-small")
    return big, small


@pytest.fixture
def admin_page(client, platform_admin):
    client.force_login(platform_admin)

    def get(query: str = ""):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(LIST + query)
        assert response.status_code == 200, response.status_code
        line_queries = [q["sql"] for q in queries.captured_queries if CostLineItem._meta.db_table in q["sql"]]
        return response.content.decode(), line_queries

    return get


def assert_bounded_by_period(sqls: list[str], period: datetime) -> None:
    assert sqls, "the page read no cost lines"
    for sql in sqls:
        where = sql.split(" WHERE ", 1)[1] if " WHERE " in sql else ""
        assert '"costs_app_costlineitem"."billing_period_start" = ' in where, sql
        assert period.strftime("%Y-%m-%d") in where, sql


def test_the_list_shows_the_latest_period_by_default_and_every_query_is_bounded_to_it(lines, admin_page):
    # when
    html, sqls = admin_page()
    # then
    assert "i-september-big" in html and "i-september-small" in html and "i-august" not in html
    assert_bounded_by_period(sqls, SEPTEMBER)
    assert re.search(r"\b8 cost line items\b", html)  # September's, not the table's 10
    filters = html.split('id="changelist-filter"')[1]
    assert "?period=2024-08" in filters and "?period=2024-09" in filters and ">All<" not in filters.split("account")[0]


def test_another_period_filters_sorts_and_searches_stay_bounded(lines, admin_page):
    big, _ = lines
    for query in (
        "?period=2024-08",
        f"?period=2024-08&account__id__exact={big.pk}&o=0",
        f"?period=2024-08&account__id__exact={big.pk}&o=-0",
        "?period=2024-08&charge_category=Usage&q=i-august",
        "?period=2024-08&_facets=1",
    ):
        # when
        html, sqls = admin_page(query)
        # then
        assert "i-august" in html and "i-september" not in html, query
        assert_bounded_by_period(sqls, AUGUST)
        assert not any("FILTER (WHERE" in sql for sql in sqls), (query, "a facet count was run")


def test_sorting_is_offered_only_where_an_index_serves_it(lines, admin_page):
    big, _ = lines
    # when: no account chosen, no column sorts (the list is in load order, newest first), even asked by hand
    for column in range(4):
        html, sqls = admin_page(f"?o={column}")
        # then
        assert 'class="sortable' not in html
        assert all('ORDER BY "costs_app_costlineitem"."id" DESC' in sql for sql in sqls if "ORDER BY" in sql), sqls
    # when: within one account, the charge time sorts on the (account, charge_period_start) index
    html, sqls = admin_page(f"?account__id__exact={big.pk}&o=0")
    assert 'class="sortable' in html
    assert any(
        'ORDER BY "costs_app_costlineitem"."charge_period_start" ASC' in sql and "account_id" in sql for sql in sqls
    ), sqls


def test_the_count_is_an_estimate_past_the_bound_and_says_so(lines, admin_page, monkeypatch):
    # given: a bound below the period's 8 lines
    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 3)
    # when
    html, sqls = admin_page()
    # then: "about N", N from the planner; no unbounded COUNT over the cost lines
    assert re.search(r"about \d+ cost line items \(an estimate", html), html[-3000:]
    assert re.search(r'<span class="small quiet">about \d+ results', html)  # the search bar's count too
    counts = [sql for sql in sqls if "COUNT(" in sql.upper()]
    assert counts and all("LIMIT 4" in sql for sql in counts), counts
    # and below the bound the count is exact
    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 10_000)
    html, _ = admin_page()
    assert "about" not in html and re.search(r"\b8 cost line items\b", html)


def test_the_periods_come_from_the_rollups_newest_first_and_only_the_users(lines, user):
    big, small = lines
    # given: the viewer's team holds only the small account
    big.team = TeamFactory(name="other")
    big.save()
    # then
    assert billing_periods_for(user) == [SEPTEMBER]
    assert billing_periods_for(None) == []


def test_an_empty_store_lists_nothing(db, admin_page):
    html, _ = admin_page()
    assert "0 cost line items" in html

"""The monthly rollups (CostMonthRollup, CostTagMonthRollup, kept by triggers on the daily and tag rollups,
migrations 0016 and 0017) always equal the daily rollups summed per account × month × service × sub-account × region
× currency (and tag key and value): after a load through the real import path, a reload that changes a month,
retention of old days (batched, partly into a month), an account's deletion, and a TRUNCATE."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Count, Sum

from costs_app.models import CostAllocationTag, CostDailyRollup, CostMonthRollup, CostTagMonthRollup, CostTagRollup
from costs_app.services.ingest import focus_file_import
from tasks_app.models import RetentionPolicy
from tasks_app.services.retention import old_data_cleanup
from tests.costs_app.focus_lines import daily, line, load, midnight
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE

pytestmark = pytest.mark.django_db

SUMS = ("billed_cost", "effective_cost", "list_cost", "line_count")
DIMS = ("account_id", "service_name", "sub_account_id", "region_id", "billing_currency")
TAG_DIMS = ("account_id", "tag_key", "tag_value", *DIMS[1:])


def expected(source=CostDailyRollup, dims=DIMS) -> set[tuple]:
    """The daily (or tag) rollups summed by month in Python (no SQL shared with the triggers)."""
    totals: dict[tuple, list] = {}
    for row in source.objects.values("day", *dims, *SUMS):
        key = (row["day"].replace(day=1), *(row[dim] for dim in dims))
        sums = totals.setdefault(key, [0, 0, 0, 0, 0])
        for i, name in enumerate(SUMS):
            sums[i] += row[name]
        sums[4] += 1
    return {(*key, *sums) for key, sums in totals.items()}


def stored(target=CostMonthRollup, dims=DIMS) -> set[tuple]:
    return set(target.objects.values_list("month", *dims, *SUMS, "rollup_rows"))


def months_equal_days() -> bool:
    return stored() == expected() and stored(CostTagMonthRollup, TAG_DIMS) == expected(CostTagRollup, TAG_DIMS)


def test_a_load_and_a_reload_of_real_focus_files_keep_the_months_equal_to_the_days(tmp_path):
    # given: the FOCUS sample file, and a second account with hand-made lines of two sub-accounts, tagged "team"
    CostAllocationTag.objects.create(key="team", is_active=True)
    sample = CloudAccountFactory(provider="focus", name="sample")
    focus_file_import(account=sample, path=str(SAMPLE))
    other = CloudAccountFactory(provider="focus", name="other")
    days = [date(2024, 9, d) for d in (1, 2, 30)]
    september = [
        *daily("i-web", days, "2.5", service_name="Amazon EC2", sub_account_id="111", tags={"team": "web"}),
        *daily("i-api", days[:2], "4", service_name="Amazon EC2", sub_account_id="222", tags={"team": "api"}),
        *daily("i-none", days[1:], "1.25", service_name="Amazon EC2", sub_account_id="222"),
    ]
    load(other, september, tmp_path, name="september.csv")
    # then
    assert months_equal_days() and len(stored()) > 10
    by_sub_account = CostMonthRollup.objects.filter(account=other).values_list("sub_account_id", "billed_cost")
    assert sorted(by_sub_account) == [("111", 7.5), ("222", 10.5)]
    by_tag = CostTagMonthRollup.objects.filter(account=other, tag_key="team").values_list("tag_value", "billed_cost")
    assert sorted(by_tag) == [("", 2.5), ("api", 8), ("web", 7.5)]
    # when: September is reloaded with other services and fewer days (its old days must leave the month)
    changed = [line(start=midnight(date(2024, 9, 3)), cost="7", service_name="Amazon S3", tags={"team": "web"})]
    load(other, changed, tmp_path, name="september-2.csv")
    # then
    assert months_equal_days()
    months = CostMonthRollup.objects.filter(account=other).values_list("month", "service_name", "billed_cost")
    assert list(months) == [(date(2024, 9, 1), "Amazon S3", 7)]
    tags = CostTagMonthRollup.objects.filter(account=other).values_list("tag_value", "billed_cost")
    assert list(tags) == [("web", 7)]
    # when: the same file again (every day replaced by equal rows)
    focus_file_import(account=sample, path=str(SAMPLE))
    assert months_equal_days()


def test_retention_of_old_days_removes_them_from_their_months(tmp_path, settings):
    # given: rollups of days on both sides of a daily_rollups retention of 400 days, in batches of 2 rows
    settings.RETENTION_BATCH_SIZE = 2
    now = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)
    today = now.date()
    RetentionPolicy.objects.update_or_create(data_class="daily_rollups", defaults={"days": 400, "enabled": True})
    account = CloudAccountFactory(provider="focus")
    old_days = [today - timedelta(days=n) for n in (403, 402, 401, 399, 398)]  # the cut falls inside a month
    CostAllocationTag.objects.create(key="team", is_active=True)
    rows = [*daily("i-a", old_days, "1", tags={"team": "web"}), *daily("i-b", old_days[:2], "3", region_id="eu-west-1")]
    load(account, rows, tmp_path)
    before = stored()
    assert months_equal_days()
    # when
    old_data_cleanup(now=now)
    # then: the days past the cutoff left their month; the month keeps the days inside the window
    assert months_equal_days() and stored() != before
    assert CostMonthRollup.objects.aggregate(rows=Sum("rollup_rows"))["rows"] == 2
    assert not CostMonthRollup.objects.filter(region_id="eu-west-1").exists()


def test_deleting_an_account_and_truncating_leave_no_month_behind(tmp_path):
    keep, gone = CloudAccountFactory(provider="focus"), CloudAccountFactory(provider="focus")
    CostAllocationTag.objects.create(key="team", is_active=True)
    load(keep, daily("i-k", [date(2024, 9, 1)], "1"), tmp_path, name="keep.csv")
    load(gone, daily("i-g", [date(2024, 9, 1), date(2024, 10, 1)], "1", tags={"team": "x"}), tmp_path, name="g.csv")
    gone.delete()
    assert months_equal_days()
    assert set(CostMonthRollup.objects.values_list("account_id", flat=True)) == {keep.pk}
    assert set(CostTagMonthRollup.objects.values_list("account_id", flat=True)) == {keep.pk}
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM providers_app_cloudaccount WHERE id = %s", [keep.pk])  # outside Django
    assert months_equal_days() and stored() == set()
    load(CloudAccountFactory(provider="focus"), daily("i-t", [date(2024, 9, 1)], "1"), tmp_path, name="t.csv")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE costs_app_costdailyrollup, costs_app_costtagrollup")
    assert not CostMonthRollup.objects.exists() and not CostTagMonthRollup.objects.exists()
    assert CostMonthRollup.objects.aggregate(n=Count("id"))["n"] == 0

"""Ingest's rollups are summed on the client while the COPY runs: they must equal what SQL computes from the lines.

Each test loads real files through focus_file_import, snapshots the rollup tables, rebuilds them from the stored
lines with the SQL path (`_roll_up_days`, `tag_rollups_rebuild`), and compares every column.
"""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.models import Sum

from costs_app.models import CostAllocationTag, CostDailyRollup, CostLineItem, CostTagRollup
from costs_app.services.ingest import _roll_up_days, focus_file_import, tag_rollups_rebuild
from finops.errors import PermanentError
from providers_app.models import CloudAccount
from tests.costs_app.focus_lines import line, load, midnight, write_focus
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE

pytestmark = pytest.mark.django_db

DAILY = [
    "day", "billing_period_start", "service_name", "service_category", "sub_account_id", "region_id",
    "billing_currency", "billed_cost", "effective_cost", "list_cost", "line_count",
]  # fmt: skip
TAGS = [
    "day", "tag_key", "tag_value", "service_name", "sub_account_id", "region_id", "billing_currency",
    "billed_cost", "effective_cost", "list_cost", "line_count",
]  # fmt: skip


def snapshot(account) -> tuple[set, set]:
    daily = set(CostDailyRollup.objects.filter(account=account).values_list(*DAILY))
    tags = set(CostTagRollup.objects.filter(account=account).values_list(*TAGS))
    return daily, tags


def sql_rollups(account) -> tuple[set, set]:
    """The rollups as the SQL path computes them from the stored lines (inside a rolled-back savepoint)."""
    keys = list(CostAllocationTag.objects.filter(is_active=True).values_list("key", flat=True))
    try:
        with transaction.atomic():
            CostDailyRollup.objects.filter(account=account).delete()
            days = sorted(
                {
                    d.astimezone(UTC).date()
                    for d in CostLineItem.objects.filter(account=account).values_list("charge_period_start", flat=True)
                }
            )
            with connection.cursor() as cursor:
                if days:
                    _roll_up_days(cursor, account.pk, days)
            if keys:
                tag_rollups_rebuild(keys=keys, account_id=account.pk)
            expected = snapshot(account)
            raise _Rollback
    except _Rollback:
        pass
    return expected


class _Rollback(Exception):
    pass


def test_client_sums_equal_sql_sums_on_the_focus_sample():
    for key in ("environment", "application", "business_unit"):
        CostAllocationTag.objects.create(key=key)
    account = CloudAccountFactory(provider="focus", name="sample")
    focus_file_import(account=account, path=str(SAMPLE))

    daily, tags = snapshot(account)
    assert len(daily) > 100 and len(tags) > 300
    assert (daily, tags) == sql_rollups(account)
    # And a reload (every day's lines replaced) gives the same rows again.
    result = focus_file_import(account=account, path=str(SAMPLE))
    assert result.rows_replaced == 1000
    assert snapshot(account) == (daily, tags)


def test_a_day_shared_with_another_billing_period_is_summed_from_all_its_lines(tmp_path):
    """A September correction billed in the October period: 30 September holds lines of both periods."""
    CostAllocationTag.objects.create(key="team")
    account = CloudAccountFactory(provider="focus", name="shared-day")
    sep30 = midnight(date(2024, 9, 30))
    october = {"billing_period_start": datetime(2024, 10, 1, tzinfo=UTC),
               "billing_period_end": datetime(2024, 11, 1, tzinfo=UTC)}  # fmt: skip
    rows = [
        line(start=sep30, cost="10", tags={"team": "web"}),
        line(start=sep30 - timedelta(days=1), cost="4", tags={"team": "web"}),
        line(start=sep30, cost="-3", charge_category="Credit", tags={"team": "api"}, **october),
        line(start=midnight(date(2024, 10, 2)), cost="7", **october),
    ]
    load(account, rows, tmp_path, name="both.csv")
    day = CostDailyRollup.objects.get(account=account, day=date(2024, 9, 30))
    assert (day.billed_cost, day.line_count) == (Decimal("7"), 2)
    assert day.billing_period_start == datetime(2024, 9, 1, tzinfo=UTC)

    # September again, changed: 30 September must keep October's credit and take the new September line.
    load(account, [line(start=sep30, cost="12.5", tags={"team": "web"})], tmp_path, name="september.csv")
    day = CostDailyRollup.objects.get(account=account, day=date(2024, 9, 30))
    assert (day.billed_cost, day.line_count) == (Decimal("9.5"), 2)
    assert not CostDailyRollup.objects.filter(account=account, day=date(2024, 9, 29)).exists()  # no line left
    assert dict(
        CostTagRollup.objects.filter(account=account, day=date(2024, 9, 30), tag_key="team").values_list(
            "tag_value", "billed_cost"
        )
    ) == {"web": Decimal("12.5"), "api": Decimal("-3")}
    assert snapshot(account) == sql_rollups(account)


def test_money_beyond_15_decimals_is_summed_as_postgres_rounds_it(tmp_path):
    account = CloudAccountFactory(provider="focus", name="decimals")
    start = midnight(date(2024, 9, 3))
    costs = ["0.12345678901234567", "-0.0000000000000005", "1.5e-20", "2.0000000000000004999", "1e2", "+.25"]
    load(account, [line(start=start, cost=c) for c in costs], tmp_path)

    stored = sum(CostLineItem.objects.filter(account=account).values_list("billed_cost", flat=True))
    # numeric(38, 15) rounds half away from zero: 0.123456789012346, -0.000000000000001, 0, 2.000000000000000, ...
    assert stored == Decimal("0.123456789012346") - Decimal("1e-15") + Decimal("2") + Decimal("100") + Decimal(".25")
    day = CostDailyRollup.objects.get(account=account)
    assert day.billed_cost == stored
    assert snapshot(account) == sql_rollups(account)


def test_tag_values_of_any_json_type_roll_up_as_postgres_prints_them(tmp_path):
    CostAllocationTag.objects.create(key="team")
    account = CloudAccountFactory(provider="focus", name="tag-types")
    start = midnight(date(2024, 9, 5))
    values = ["web", 5, 1.50, True, None, {"a": 1, "b": [1, 2]}, ["x"]]
    rows = [line(start=start, cost="1", tags={"team": v, "other": "y"}) for v in values]
    rows += [line(start=start, cost="1", tags={"other": "only"}), line(start=start, cost="1")]
    load(account, rows, tmp_path)

    got = dict(CostTagRollup.objects.filter(account=account, tag_key="team").values_list("tag_value", "line_count"))
    assert got == {"web": 1, "5": 1, "1.5": 1, "true": 1, '{"a": 1, "b": [1, 2]}': 1, '["x"]': 1, "": 3}
    assert snapshot(account) == sql_rollups(account)


def test_deleting_an_account_outside_django_removes_its_cost_data(tmp_path):
    account = CloudAccountFactory(provider="focus", name="raw-delete")
    kept = CloudAccountFactory(provider="focus", name="kept")
    load(account, [line(start=midnight(date(2024, 9, 1)), cost="3")], tmp_path, name="a.csv")
    load(kept, [line(start=midnight(date(2024, 9, 1)), cost="4")], tmp_path, name="b.csv")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM providers_app_cloudaccount WHERE id = %s", [account.pk])
    for model in (CostLineItem, CostDailyRollup):
        assert not model.objects.filter(account_id=account.pk).exists()
        assert model.objects.filter(account=kept).count() == 1
    # Django's own delete cascades as before.
    kept.delete()
    assert not CostLineItem.objects.exists() and not CostDailyRollup.objects.exists()


@pytest.mark.parametrize(
    "name, field, value, expected",
    [
        # Caught by the FOCUS checks: PostgreSQL text cannot hold NUL.
        ("nul.csv", "resource_name", "bad\x00name", "nul.csv row 23457 column ResourceName: "),
        # Caught by PostgreSQL inside the COPY, thousands of rows in: year 0000 is well-formed ISO but timestamptz
        # has no year 0. The error still says which file, row and column.
        ("year0.csv", "charge_period_end", "0000-01-01T00:00:00Z", "year0.csv row 23457 column ChargePeriodEnd: "),
        # Well-formed decimals (the decimal rules let an exponent through) beyond numeric(38, 15)'s 23 integer
        # digits: in a column the rollups sum and in one they do not. A binary COPY (tried: bench/README.md,
        # ingest) would have to refuse these itself, as the year 0 above: binary input takes what the types hold.
        ("big.csv", "list_unit_price", "1E+30", "big.csv row 23457 column ListUnitPrice: "),
        ("big_billed.csv", "billed_cost", "1E+30", "big_billed.csv row 23457 column BilledCost: "),
    ],
)
def test_a_value_postgres_cannot_store_fails_naming_file_row_and_column(tmp_path, name, field, value, expected):
    account = CloudAccountFactory(provider="focus", name=name)
    start = midnight(date(2024, 9, 2))
    load(account, [line(start=start, cost="1", resource_id=f"r-{i}") for i in range(3)], tmp_path, name="good.csv")
    before = snapshot(account)

    rows = [line(start=start, cost="2", resource_id=f"r-{i}") for i in range(30000)]
    rows[23456][field] = value
    path = write_focus(tmp_path / name, rows)
    with pytest.raises(PermanentError) as failure:
        focus_file_import(account=CloudAccount.objects.get(pk=account.pk), path=str(path))
    assert expected in str(failure.value), str(failure.value)
    assert CostLineItem.objects.filter(account=account).count() == 3
    assert snapshot(account) == before


def test_json_that_jsonb_refuses_is_a_rule_error(tmp_path):
    account = CloudAccountFactory(provider="focus", name="json")
    start = midnight(date(2024, 9, 2))
    rows = [line(start=start, cost="1", tags='{"a": NaN}'), line(start=start, cost="1", tags='{"a": "x\\u0000"}')]
    path = write_focus(tmp_path / "json.csv", rows)
    with pytest.raises(PermanentError) as failure:
        focus_file_import(account=account, path=str(path))
    assert "json.csv row 1 column Tags" in str(failure.value)
    violations = failure.value.report.as_dict()["violations"]
    assert [(v["rule"], v["count"]) for v in violations] == [("json_object", 2)]


def test_a_period_first_seen_in_a_later_file_is_replaced_too(tmp_path):
    """The delete beside the COPY covers the periods of the first batch; a later file's period is replaced after."""
    account = CloudAccountFactory(provider="focus", name="two-files")
    folder = tmp_path / "exports"
    folder.mkdir()

    def month(first: date, cost: str, n: int) -> list[dict]:
        return [line(start=midnight(first + timedelta(days=i % 28)), cost=cost, resource_id=f"r-{i}") for i in range(n)]

    write_focus(folder / "1-september.csv", month(date(2024, 9, 1), "1", 40))
    write_focus(folder / "2-october.csv", month(date(2024, 10, 1), "2", 30))
    first = focus_file_import(account=account, path=str(folder))
    assert (first.rows_loaded, first.rows_replaced) == (70, 0)

    write_focus(folder / "1-september.csv", month(date(2024, 9, 1), "3", 20))
    write_focus(folder / "2-october.csv", month(date(2024, 10, 1), "4", 10))
    again = focus_file_import(account=account, path=str(folder))
    assert (again.rows_loaded, again.rows_replaced) == (30, 70)
    totals = dict(
        CostDailyRollup.objects.filter(account=account)
        .values_list("billing_period_start__month")
        .annotate(total=Sum("billed_cost"))
    )
    assert totals == {9: Decimal("60"), 10: Decimal("40")}
    assert CostLineItem.objects.filter(account=account).count() == 30
    assert snapshot(account) == sql_rollups(account)

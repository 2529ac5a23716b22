"""FOCUS 1.2 export: spec column order, spec formatting, and a lossless round trip through import."""

import csv
import io
from decimal import Decimal

import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from costs_app.models import CostLineItem
from costs_app.services.export import focus_export
from costs_app.services.ingest import focus_file_import
from finops.errors import PermanentError
from providers_app import focus_schema as focus
from tests.factories import CloudAccountFactory, CostLineItemFactory
from tests.providers_app.focus_files import SAMPLE, SAMPLE_ROWS

pytestmark = pytest.mark.django_db

FIELDS = [c.field for c in focus.COLUMNS]
SPEC_ORDER = [c.name for c in focus.COLUMNS]


def lines(account) -> list[tuple]:
    return list(CostLineItem.objects.filter(account=account).order_by("source_row").values_list(*FIELDS))


def sorted_lines(account) -> list[tuple]:
    return sorted(lines(account), key=repr)


@pytest.fixture
def sample_account():
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))
    return account


def test_csv_export_has_the_spec_columns_and_formats(sample_account):
    # given
    out = io.BytesIO()
    # when
    written = focus_export(account=sample_account, start=None, end=None, out=out, fmt="csv")
    # then
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert written == len(rows) == SAMPLE_ROWS
    assert list(rows[0]) == SPEC_ORDER
    sqs = next(  # the sample's first row
        r
        for r in rows
        if r["ResourceId"] == "arn:ats:sqs:us-test-2:347410479675:mibelllmel-i-032l64f2065481b12"
        and r["ChargePeriodStart"] == "2024-09-18T22:00:00Z"
    )
    assert sqs["BilledCost"] == "0.0000008"  # numeric(38,15) padding trimmed, no float artefacts
    assert sqs["BillingPeriodStart"] == "2024-09-01T00:00:00Z"
    assert sqs["ChargePeriodEnd"] == "2024-09-18T23:00:00Z"
    assert sqs["AvailabilityZone"] == "" and sqs["InvoiceId"] == ""  # nulls are empty
    tagged = next(r for r in rows if r["Tags"])
    assert tagged["Tags"].startswith("{") and '"' in tagged["Tags"]


def test_a_focus_1_2_file_round_trips(sample_account, tmp_path):
    # given: the sample as FOCUS 1.2, with the 1.2-only columns filled in
    CostLineItem.objects.filter(account=sample_account).update(
        invoice_id="INV-2024-09",
        service_subcategory="Other (Compute)",
        billing_account_type="Billing Profile",
        pricing_currency="EUR",
        pricing_currency_effective_cost=Decimal("1.234567890123456"),
        commitment_discount_quantity=Decimal("-42.5"),
        sku_price_details={"CoreCount": 4, "Tier": "Premium"},
    )
    exported = tmp_path / "focus_1_2.csv"
    focus_export(account=sample_account, start=None, end=None, out=str(exported))
    copy = CloudAccountFactory()
    # when
    result = focus_file_import(account=copy, path=str(exported))
    # then
    assert result.report["versions"] == {"focus_1_2.csv": "1.2"}
    assert result.report["missing_columns"] == {"focus_1_2.csv": []}
    assert result.rows_loaded == SAMPLE_ROWS
    assert sorted_lines(copy) == sorted_lines(sample_account)


def test_a_parquet_export_round_trips_with_decimal_types(sample_account, tmp_path):
    # given
    exported = tmp_path / "focus.parquet"
    # when
    written = focus_export(account=sample_account, start=None, end=None, out=exported, fmt="parquet")
    copy = CloudAccountFactory()
    focus_file_import(account=copy, path=str(exported))
    # then
    schema = pq.read_schema(exported)
    assert schema.names == SPEC_ORDER
    assert str(schema.field("BilledCost").type) == "decimal128(38, 15)"
    assert written == SAMPLE_ROWS
    assert sorted_lines(copy) == sorted_lines(sample_account)


def test_the_period_range_is_inclusive(tmp_path):
    # given
    account = CloudAccountFactory()
    for month in (8, 9, 10):
        CostLineItemFactory(
            account=account,
            billing_period_start=f"2024-{month:02d}-01T00:00:00Z",
            billing_period_end=f"2024-{month + 1:02d}-01T00:00:00Z",
            charge_period_start=f"2024-{month:02d}-02T00:00:00Z",
            charge_period_end=f"2024-{month:02d}-03T00:00:00Z",
        )
    # when
    only_sept_oct = focus_export(account=account, start="2024-09", end="2024-10", out=io.BytesIO())
    from_sept = focus_export(account=account, start="2024-09", end=None, out=io.BytesIO())
    until_aug = focus_export(account=account, start=None, end="2024-08", out=io.BytesIO())
    # then
    assert (only_sept_oct, from_sept, until_aug) == (2, 2, 1)
    with pytest.raises(PermanentError, match="YYYY-MM"):
        focus_export(account=account, start="2024-9", end=None, out=io.BytesIO())


def test_export_focus_command_writes_the_file(sample_account, tmp_path, capsys):
    # given
    out = tmp_path / "out.parquet"
    # when
    call_command("export_focus", "--account", sample_account.name, "--start", "2024-10", "--out", str(out))
    # then
    assert "wrote 1 rows of FOCUS 1.2 (parquet)" in capsys.readouterr().out
    assert pq.read_table(out).num_rows == 1
    with pytest.raises(CommandError, match="no account"):
        call_command("export_focus", "--account", "nobody", "--out", str(out))


def test_an_export_reads_one_month_partition_at_a_time_in_month_order_without_sorting(tmp_path):
    # given: an account with three months loaded by imports (a leaf each, loaded out of order), a line the ORM
    # wrote into a month that has no leaf of the account's yet (a DEFAULT partition), and another account
    from datetime import UTC, date, datetime

    from django.db import connection

    from costs_app.services.export import _month_query, export_months
    from tests.costs_app.focus_lines import daily, load

    account, other = CloudAccountFactory(), CloudAccountFactory()
    for month in (10, 8, 9):
        load(account, daily(f"i-{month}", [date(2024, month, d) for d in (1, 2, 3)], "1"), tmp_path, f"{month}.csv")
    load(other, daily("i-other", [date(2024, 9, 5)], "7"), tmp_path, "other.csv")
    CostLineItemFactory(
        account=account,
        billing_period_start="2023-12-01T00:00:00Z",
        billing_period_end="2024-01-01T00:00:00Z",
        charge_period_start="2023-12-02T00:00:00Z",
        charge_period_end="2023-12-03T00:00:00Z",
    )
    # when
    out = io.BytesIO()
    written = focus_export(account=account, start=None, end=None, out=out)
    # then: every line of the account, month after month, none of the other account's
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert written == len(rows) == 10
    assert [r["BillingPeriodStart"][:7] for r in rows] == ["2023-12"] + ["2024-08"] * 3 + ["2024-09"] * 3 + [
        "2024-10"
    ] * 3
    with connection.cursor() as cursor:
        months = export_months(cursor, account=account, start=None, end=None)
        assert [m.strftime("%Y-%m") for m in months] == ["2023-12", "2024-08", "2024-09", "2024-10"]
        assert [m.month for m in export_months(cursor, account=account, start="2024-09", end="2024-09")] == [9]
        # and: each month's statement reads the account's leaf of that month only, and sorts nothing
        query = _month_query(account.pk, datetime(2024, 9, 1, tzinfo=UTC))
        cursor.execute(b"EXPLAIN " + query.as_string(cursor.connection).encode())
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"costs_app_costlineitem_p202409_a{account.pk}" in plan
    assert f"_a{other.pk}" not in plan and "Sort" not in plan and "Append" not in plan

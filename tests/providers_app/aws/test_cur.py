"""The S3 export cost source against moto's S3: CUR 2.0 (CSV.gz, Parquet), legacy CUR and FOCUS deliveries,
newest manifest per period, unchanged periods skipped, the mapping's derived columns, and bad files."""

import json
from decimal import Decimal

import pytest
from django.db.models import Count, Sum

from costs_app.models import CostLineItem
from costs_app.services.ingest import FocusRulesError, account_cost_sync
from finops.errors import PermanentError
from providers_app.connectors.aws import cost_source
from providers_app.connectors.aws.cur import CUR, cur_column_name
from providers_app.models import Credential, ExportState
from tests.factories import CloudAccountFactory
from tests.providers_app.aws import cur_files as f
from tests.providers_app.aws.conftest import KEYS

pytestmark = pytest.mark.django_db

BUCKET = "acme-billing"


def aws_account(moto, name="acme-aws", **settings):
    account = CloudAccountFactory(
        provider="aws",
        name=name,
        external_id=f.ACCOUNT,
        settings={"bucket": BUCKET, "prefix": "cur", "export_name": "finops", "endpoint_url": moto.url, **settings},
    )
    credential = Credential(account=account, kind="access_key")
    credential.set_secret(KEYS)
    credential.save()
    return account


def sums(account) -> dict[str, dict]:
    rows = (
        CostLineItem.objects.filter(account=account)
        .values("billing_period_start__date")
        .annotate(n=Count("id"), billed=Sum("billed_cost"), effective=Sum("effective_cost"), list=Sum("list_cost"))
    )
    return {
        r["billing_period_start__date"].strftime("%Y-%m"): {
            "rows": r["n"], "billed": r["billed"], "effective": r["effective"], "list": r["list"],
        }
        for r in rows
    }  # fmt: skip


@pytest.fixture
def s3(moto):
    client = moto.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def test_cur2_csv_gz_data_export_loads_two_periods_with_exact_sums_then_skips_and_replaces(moto, s3):
    # given: two billing periods of CUR 2.0 CSV.gz, the second in two files
    sep, octo = f.cur2_rows("2024-09", 40), f.cur2_rows("2024-10", 30)
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"finops-00001.csv.gz": f.csv_gz(sep)})
    f.put_data_export(
        s3, BUCKET, "cur", "finops", "2024-10",
        {"finops-00001.csv.gz": f.csv_gz(octo[:20]), "finops-00002.csv.gz": f.csv_gz(octo[20:])},
    )  # fmt: skip
    account = aws_account(moto)
    # when
    first = account_cost_sync(account_id=account.id)
    # then: every row loaded, and the sums equal an independent Decimal sum of the source rows
    want = f.expected(sep + octo)
    assert first.periods == {"2024-09": 43, "2024-10": 33}
    assert not first.report["violations"], first.report
    got = sums(account)
    for period in ("2024-09", "2024-10"):
        assert got[period]["rows"] == want[period]["rows"]
        assert got[period]["billed"] == want[period]["billed"]
        assert got[period]["effective"] == want[period]["effective"]
        assert got[period]["list"] == want[period]["list"]

    # when: nothing changed in S3
    again = account_cost_sync(account_id=account.id)
    # then
    assert again.unchanged_periods == ["2024-09", "2024-10"] and again.rows_loaded == 0
    assert CostLineItem.objects.filter(account=account).count() == 76

    # when: October is delivered again (a new manifest version with other files)
    octo2 = f.cur2_rows("2024-10", 12, scale="2")
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-10", {"finops-00001.csv.gz": f.csv_gz(octo2)}, version="v2")
    changed = account_cost_sync(account_id=account.id)
    # then: exactly October replaced, September untouched
    assert changed.unchanged_periods == ["2024-09"]
    assert changed.periods == {"2024-10": 15}
    assert changed.rows_replaced == 33
    got = sums(account)
    assert got["2024-10"]["billed"] == f.expected(octo2)["2024-10"]["billed"]
    assert got["2024-09"]["billed"] == want["2024-09"]["billed"]
    assert ExportState.objects.get(account=account, billing_period="2024-10").rows == 15


def test_cur_mapping_derives_the_documented_focus_columns(moto, s3):
    rows = f.cur2_rows("2024-09", 10)
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"finops-00001.csv.gz": f.csv_gz(rows)})
    account = aws_account(moto)
    account_cost_sync(account_id=account.id)
    lines = {line.source_row: line for line in CostLineItem.objects.filter(account=account)}

    on_demand = lines[1]  # row 0: EC2 on demand
    assert on_demand.charge_category == "Usage" and on_demand.charge_class is None
    assert on_demand.pricing_category == "Standard"
    assert on_demand.charge_frequency == "Usage-Based"
    assert on_demand.resource_id == "i-00000000000000000"
    assert on_demand.region_id == "us-east-1" and on_demand.availability_zone == "us-east-1a"
    assert on_demand.service_name == "Amazon Elastic Compute Cloud" and on_demand.service_category == "Compute"
    assert on_demand.sub_account_id == f.ACCOUNT and on_demand.billing_account_id == f.ACCOUNT
    assert on_demand.list_cost == Decimal(rows[0]["pricing_public_on_demand_cost"])
    assert on_demand.tags == {"team": "data", "Name": "web-0"}
    assert on_demand.consumed_quantity == Decimal(1) and on_demand.consumed_unit == "Hrs"
    assert on_demand.sku_id == "SKU0ABC" and on_demand.sku_meter == "BoxUsage:m5.large"
    assert on_demand.provider_name == "AWS" and on_demand.invoice_issuer_name == "Amazon Web Services, Inc."

    covered = lines[3]  # Savings Plan covered usage
    assert (covered.pricing_category, covered.commitment_discount_category) == ("Committed", "Spend")
    assert covered.commitment_discount_id == f.SP_ARN and covered.commitment_discount_status == "Used"
    assert covered.commitment_discount_type == "Savings Plan"
    assert covered.effective_cost == Decimal(rows[2]["savings_plan_savings_plan_effective_cost"])
    reserved = lines[4]
    assert (reserved.commitment_discount_category, reserved.commitment_discount_id) == ("Usage", f.RI_ARN)
    assert reserved.effective_cost == Decimal(rows[3]["reservation_effective_cost"])
    assert lines[5].resource_id == "acme-logs" and lines[5].service_category == "Storage"
    tax = lines[6]
    assert (tax.charge_category, tax.pricing_category, tax.consumed_quantity) == ("Tax", None, None)
    assert tax.list_cost == tax.billed_cost  # no public price: the unblended cost
    assert lines[7].charge_category == "Credit" and lines[7].charge_frequency == "One-Time"
    refund = lines[8]
    assert (refund.charge_category, refund.charge_class) == ("Credit", "Correction")
    assert lines[9].resource_id == f.RDS_ARN and lines[9].service_category == "Databases"
    assert lines[10].pricing_category == "Dynamic"  # Spot
    ri_fee, sp_fee, negation = lines[11], lines[12], lines[13]
    assert (ri_fee.charge_category, ri_fee.charge_frequency, ri_fee.effective_cost) == (
        "Purchase", "Recurring", Decimal("4.75"),
    )  # fmt: skip
    assert sp_fee.effective_cost == Decimal("12.5") and sp_fee.pricing_category == "Committed"
    assert (negation.charge_category, negation.effective_cost, negation.billed_cost) == (
        "Usage", Decimal(0), Decimal("-3.25"),
    )  # fmt: skip
    assert (negation.pricing_category, ri_fee.pricing_category) == ("Committed", "Committed")
    assert (lines[7].pricing_category, lines[8].pricing_category) == (None, None)  # credit, refund


def test_cur2_parquet_with_map_columns_and_double_money(moto, s3):
    rows = f.cur2_rows("2024-09", 30)
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"finops-00001.snappy.parquet": f.cur2_parquet(rows)})
    account = aws_account(moto)
    result = account_cost_sync(account_id=account.id)
    assert result.periods == {"2024-09": 33}
    want = f.expected(rows)["2024-09"]
    got = sums(account)["2024-09"]
    assert (got["billed"], got["effective"], got["list"]) == (want["billed"], want["effective"], want["list"])
    line = CostLineItem.objects.get(account=account, source_row=1)
    assert line.tags == {"team": "data", "Name": "web-0"}
    assert line.service_name == "Amazon Elastic Compute Cloud"
    account.settings["format"] = "csv"
    account.save()
    with pytest.raises(PermanentError, match=r"finops-00001.snappy.parquet is parquet, but settings.format is 'csv'"):
        account_cost_sync(account_id=account.id, force=True)
    assert line.charge_period_start.isoformat() == "2024-09-01T00:00:00+00:00"


def test_legacy_cur_layout_with_slash_headers_uses_the_period_manifest(moto, s3):
    # given: two assemblies of September; the period-level manifest points to the second
    header_old, old = f.legacy_rows(f.cur2_rows("2024-09", 10, scale="3"))
    header, rows = f.legacy_rows(f.cur2_rows("2024-09", 20))
    f.put_legacy_cur(s3, BUCKET, "cur", "finops", "2024-09", "asm-1", {"finops-1.csv.gz": f.csv_gz(old, header_old)})
    f.put_legacy_cur(s3, BUCKET, "cur", "finops", "2024-09", "asm-2", {"finops-1.csv.gz": f.csv_gz(rows, header)})
    account = aws_account(moto)  # layout "auto": no Data Exports manifest, so the legacy layout
    # when
    result = account_cost_sync(account_id=account.id)
    # then
    assert result.periods == {"2024-09": 23}
    assert result.files == ["cur/finops/20240901-20241001/asm-2/finops-1.csv.gz"]
    assert sums(account)["2024-09"]["billed"] == f.expected(f.cur2_rows("2024-09", 20))["2024-09"]["billed"]
    line = CostLineItem.objects.get(account=account, source_row=1)
    assert line.tags == {"team": "data", "Name": "web-0"}  # resourceTags/user:team, resourceTags/user:Name
    assert line.commitment_discount_id is None and line.pricing_category == "Standard"
    assert CostLineItem.objects.get(account=account, source_row=3).commitment_discount_id == f.SP_ARN


def test_focus_export_ignores_x_columns(moto, s3):
    rows = f.focus_rows("2024-09", 25) + f.focus_rows("2024-10", 5)
    f.put_data_export(
        s3, BUCKET, "", "focus", "2024-09", {"part-0.csv.gz": f.csv_gz(rows[:25])}, columns=f.FOCUS_COLUMNS
    )
    f.put_data_export(
        s3, BUCKET, "", "focus", "2024-10", {"part-0.csv.gz": f.csv_gz(rows[25:])}, columns=f.FOCUS_COLUMNS
    )
    account = aws_account(moto, prefix="", export_name="focus")
    result = account_cost_sync(account_id=account.id)
    assert result.periods == {"2024-09": 25, "2024-10": 5}
    assert sum(Decimal(r["BilledCost"]) for r in rows) == sum(s["billed"] for s in sums(account).values())
    assert CostLineItem.objects.filter(account=account, billing_account_type="Billing Account").count() == 30


def test_a_bad_value_names_object_row_and_column_and_keeps_the_loaded_data(moto, s3):
    rows = f.cur2_rows("2024-09", 20)
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"finops-00001.csv.gz": f.csv_gz(rows)})
    account = aws_account(moto)
    account_cost_sync(account_id=account.id)
    fingerprint = ExportState.objects.get(account=account).fingerprint

    bad = f.cur2_rows("2024-09", 20)
    bad[12]["line_item_unblended_cost"] = "12,5"
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"finops-00001.csv.gz": f.csv_gz(bad)}, version="v2")
    with pytest.raises(FocusRulesError) as failure:
        account_cost_sync(account_id=account.id)
    assert str(failure.value).startswith(
        "cur/finops/data/BILLING_PERIOD=2024-09/v2/finops-00001.csv.gz row 13 column BilledCost: "
        "'12,5' is not a decimal"
    )
    assert CostLineItem.objects.filter(account=account).count() == 23
    assert ExportState.objects.get(account=account).fingerprint == fingerprint

    no_cost = [{k: v for k, v in r.items() if k != "line_item_unblended_cost"} for r in rows]
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"finops-00001.csv.gz": f.csv_gz(no_cost)}, version="v3")
    with pytest.raises(FocusRulesError, match="column line_item_unblended_cost: is needed for the AWS CUR"):
        account_cost_sync(account_id=account.id)

    s3.put_object(
        Bucket=BUCKET, Key="cur/finops/data/BILLING_PERIOD=2024-09/v3/finops-00001.csv.gz", Body=b"\x1f\x8bxx"
    )
    with pytest.raises(FocusRulesError, match="finops-00001.csv.gz row 1: the file is truncated or unreadable"):
        account_cost_sync(account_id=account.id)
    assert CostLineItem.objects.filter(account=account).count() == 23


def test_missing_bucket_and_bad_settings_are_permanent_errors_with_the_reason(moto):
    account = aws_account(moto, bucket="nowhere")
    with pytest.raises(PermanentError, match=r"s3:ListBucket on arn:aws:s3:::nowhere .*NoSuchBucket"):
        account_cost_sync(account_id=account.id)
    with pytest.raises(PermanentError, match="settings.export_name is required"):
        cost_source(CloudAccountFactory(provider="aws", settings={"bucket": "b"}))
    with pytest.raises(PermanentError, match="settings.regions has invalid region names"):
        cost_source(CloudAccountFactory(provider="aws", settings={"source": "cost_explorer", "regions": ["moon-1"]}))


def test_mapping_table_and_legacy_names():
    assert cur_column_name("lineItem/UsageStartDate") == "line_item_usage_start_date"
    assert cur_column_name("savingsPlan/SavingsPlanARN") == "savings_plan_savings_plan_a_r_n"
    assert cur_column_name("reservation/UnusedAmortizedUpfrontFeeForBillingPeriod") == (
        "reservation_unused_amortized_upfront_fee_for_billing_period"
    )
    text = CUR.markdown()
    assert "| ChargeCategory | `line_item_line_item_type`: Usage, DiscountedUsage" in text
    assert json.dumps(text)  # renders


def test_docs_mapping_file_is_the_rendered_tables():
    from providers_app.connectors.aws.docs import path, render

    assert path().read_text() == render(), "run: python -m providers_app.connectors.aws.docs"

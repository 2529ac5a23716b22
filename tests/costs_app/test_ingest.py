"""FOCUS ingestion into PostgreSQL: every row accounted for, periods replaced atomically, bad files change nothing."""

import gzip
import shutil
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Count, Sum

from costs_app.models import CostDailyRollup, CostLineItem
from costs_app.services.ingest import account_cost_sync, focus_file_import
from finops.errors import PermanentError
from providers_app import focus_schema as focus
from providers_app.models import CloudAccount
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import (
    SAMPLE,
    SAMPLE_ROWS,
    expected_by_period,
    sample_as_parquet,
    sample_rows,
    sample_with,
)

pytestmark = pytest.mark.django_db

FIELDS = [c.field for c in focus.COLUMNS]


def lines(account) -> list[tuple]:
    return list(CostLineItem.objects.filter(account=account).order_by("source_row").values_list(*FIELDS))


def period_counts(account) -> dict[str, int]:
    rows = CostLineItem.objects.filter(account=account).values("billing_period_start").annotate(n=Count("id"))
    return {row["billing_period_start"].strftime("%Y-%m"): row["n"] for row in rows}


def test_sample_loads_with_every_row_accounted_for():
    # given
    account = CloudAccountFactory(settings={"path": str(SAMPLE)})
    expected_counts, expected_totals = expected_by_period()
    # when
    result = account_cost_sync(account_id=account.id)
    # then
    assert result.rows_read == SAMPLE_ROWS == result.rows_loaded
    assert result.rows_skipped == 0
    assert result.periods == dict(expected_counts) == {"2024-09": 999, "2024-10": 1}
    assert period_counts(account) == dict(expected_counts)
    for period, total in expected_totals.items():
        stored = CostLineItem.objects.filter(account=account, billing_period_start__startswith=period).aggregate(
            s=Sum("billed_cost")
        )["s"]
        assert stored == total
    assert Decimal(result.as_dict()["billed_cost"]["USD"]) == sum(expected_totals.values())
    account.refresh_from_db()
    assert account.last_synced_at is not None


def test_sample_quirks_are_mapped_and_reported_not_dropped():
    # given
    account = CloudAccountFactory()
    # when
    result = focus_file_import(account=account, path=str(SAMPLE)).as_dict()
    # then: the NULL literal is a null, naive date-times are UTC, Tags are JSON objects
    first = CostLineItem.objects.get(account=account, source_row=1)
    assert first.availability_zone is None
    assert first.billing_period_start.isoformat() == "2024-09-01T00:00:00+00:00"
    assert first.charge_period_start.isoformat() == "2024-09-18T22:00:00+00:00"
    assert first.billed_cost == Decimal("0.0000008")
    tagged = CostLineItem.objects.get(account=account, source_row=2)
    assert tagged.tags == {"application": "BrightLensMatrix", "environment": "dev", "business_unit": "ViennaAI"}
    # the extra Id column is reported, not an error; 1.2-only columns are NULL
    assert result["report"]["unknown_columns"] == {"focus_sample_1.0.csv": ["Id"]}
    assert result["report"]["versions"] == {"focus_sample_1.0.csv": "1.0"}
    assert "InvoiceId" in result["report"]["missing_columns"]["focus_sample_1.0.csv"]
    # the sample's own FOCUS violations are loaded and reported with counts and examples
    violations = {(v["rule"], v["column"]): v for v in result["report"]["violations"]}
    assert set(violations) == {("not_null", "ContractedCost"), ("allowed_values_spelling", "ChargeFrequency")}
    spelling = violations[("allowed_values_spelling", "ChargeFrequency")]
    assert spelling["count"] == 7 and spelling["severity"] == "warning"
    assert spelling["examples"][0] == {
        "file": "focus_sample_1.0.csv",
        "row": 926,
        "column": "ChargeFrequency",
        "value": "Usage-based",
    }
    assert CostLineItem.objects.get(account=account, source_row=926).charge_frequency == "Usage-Based"
    assert violations[("not_null", "ContractedCost")]["count"] == 7
    assert CostLineItem.objects.filter(account=account, contracted_cost__isnull=True).count() == 7


def test_importing_twice_leaves_the_same_rows():
    # given
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))
    before = lines(account)
    rollups_before = CostDailyRollup.objects.filter(account=account).count()
    # when
    again = focus_file_import(account=account, path=str(SAMPLE))
    # then
    assert again.rows_replaced == SAMPLE_ROWS
    assert lines(account) == before
    assert CostLineItem.objects.filter(account=account).count() == SAMPLE_ROWS
    assert CostDailyRollup.objects.filter(account=account).count() == rollups_before


def test_an_import_replaces_only_its_own_account_and_periods(tmp_path):
    # given: another account with the same data, and this account with the sample
    other = CloudAccountFactory()
    focus_file_import(account=other, path=str(SAMPLE))
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))

    # when: a file with only the September rows, one cost changed
    def september_only(header, rows):
        _only_period("2024-09")(header, rows)
        rows[0]["BilledCost"] = "100.5"

    result = focus_file_import(account=account, path=str(sample_with(tmp_path, "sept.csv", september_only)))
    # then: September replaced, October kept, the other account untouched
    assert result.periods == {"2024-09": 999}
    assert period_counts(account) == {"2024-09": 999, "2024-10": 1}
    assert CostLineItem.objects.filter(account=account, billed_cost=Decimal("100.5")).count() == 1
    assert CostLineItem.objects.filter(account=other).count() == SAMPLE_ROWS


def test_rollups_match_raw_sums():
    # given
    account = CloudAccountFactory()
    # when
    focus_file_import(account=account, path=str(SAMPLE))
    # then
    raw = CostLineItem.objects.filter(account=account).aggregate(
        billed=Sum("billed_cost"), effective=Sum("effective_cost"), listed=Sum("list_cost"), n=Count("id")
    )
    rolled = CostDailyRollup.objects.filter(account=account).aggregate(
        billed=Sum("billed_cost"), effective=Sum("effective_cost"), listed=Sum("list_cost"), n=Sum("line_count")
    )
    assert rolled == raw
    with connection.cursor() as cursor:  # and per day x service, independently grouped
        cursor.execute(
            """
            SELECT (charge_period_start AT TIME ZONE 'UTC')::date, service_name, sum(billed_cost)
            FROM costs_app_costlineitem WHERE account_id = %s GROUP BY 1, 2
            """,
            [account.id],
        )
        raw_by_day = {(day, service): total for day, service, total in cursor.fetchall()}
    rolled_by_day = {}
    for day, service, total in CostDailyRollup.objects.filter(account=account).values_list(
        "day", "service_name", "billed_cost"
    ):
        rolled_by_day[(day, service)] = rolled_by_day.get((day, service), 0) + total
    assert rolled_by_day == raw_by_day


def test_billing_period_restricts_the_sync_and_counts_the_rest(tmp_path):
    # given
    account = CloudAccountFactory(settings={"path": str(SAMPLE)})
    # when
    result = account_cost_sync(account_id=account.id, billing_period="2024-10")
    # then
    assert (result.rows_read, result.rows_loaded, result.rows_skipped) == (1000, 1, 999)
    assert period_counts(account) == {"2024-10": 1}
    row = CostLineItem.objects.get(account=account)
    _, source = sample_rows()
    assert source[row.source_row - 1]["BillingPeriodStart"] == "2024-10-01 00:00:00"


def test_gzip_and_parquet_load_the_same_rows_as_csv(tmp_path):
    # given
    gz = tmp_path / "sample.csv.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    parquet = sample_as_parquet(tmp_path / "sample.parquet")
    accounts = {kind: CloudAccountFactory() for kind in ("csv", "gz", "parquet")}
    # when
    focus_file_import(account=accounts["csv"], path=str(SAMPLE))
    focus_file_import(account=accounts["gz"], path=str(gz))
    focus_file_import(account=accounts["parquet"], path=str(parquet))
    # then
    assert lines(accounts["gz"]) == lines(accounts["csv"])
    assert lines(accounts["parquet"]) == lines(accounts["csv"])
    assert len(lines(accounts["csv"])) == SAMPLE_ROWS


def test_typed_parquet_decimals_and_naive_timestamps_load_exactly(tmp_path):
    # given: Parquet with decimal128 money and naive timestamps, as typed writers produce
    plain = pq.read_table(sample_as_parquet(tmp_path / "plain.parquet"))
    columns = {}
    for name in plain.column_names:
        column = focus.BY_NAME.get(name)
        arr = plain[name]
        if column and column.type == focus.DECIMAL:
            arr = pc.if_else(pc.equal(arr, ""), None, arr).cast(pa.decimal128(38, 15))
        elif column and column.type == focus.DATETIME:
            arr = arr.cast(pa.timestamp("us"))
        columns[name] = arr
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table(columns), typed)
    reference, account = CloudAccountFactory(), CloudAccountFactory()
    focus_file_import(account=reference, path=str(SAMPLE))
    # when
    focus_file_import(account=account, path=str(typed))
    # then
    assert lines(account) == lines(reference)


def _only_period(period: str):
    def change(header, rows):
        rows[:] = [r for r in rows if r["BillingPeriodStart"].startswith(period)]

    return change


def test_a_folder_loads_every_export_in_it_in_name_order(tmp_path):
    # given
    folder = tmp_path / "exports"
    folder.mkdir()
    sample_with(folder, "b-october.csv", _only_period("2024-10"))
    sample_with(folder, "a-september.csv", _only_period("2024-09"))
    (folder / "notes.txt").write_text("not an export")
    account = CloudAccountFactory(settings={"path": str(folder)})
    # when
    result = account_cost_sync(account_id=account.id)
    # then
    assert [f.rsplit("/", 1)[-1] for f in result.files] == ["a-september.csv", "b-october.csv"]
    assert result.periods == {"2024-09": 999, "2024-10": 1}
    assert CostLineItem.objects.filter(account=account).count() == SAMPLE_ROWS


# --- malformed files: the whole import fails, names file, row and column, and changes nothing ---


def _set(row_index: int, column: str, value: str):
    def change(header, rows):
        rows[row_index][column] = value

    return change


def _drop_column(column: str):
    def change(header, rows):
        header.remove(column)
        for row in rows:
            del row[column]

    return change


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (
            "bad_decimal.csv",
            _set(16, "BilledCost", "abc"),
            "bad_decimal.csv row 17 column BilledCost: 'abc' is not a decimal",
        ),
        (
            "bad_category.csv",
            _set(4, "ChargeCategory", "Refund"),
            "bad_category.csv row 5 column ChargeCategory: 'Refund' is not one of the FOCUS values",
        ),
        (
            "no_billed_cost.csv",
            _drop_column("BilledCost"),
            "no_billed_cost.csv column BilledCost: is a mandatory FOCUS column and is missing from the file",
        ),
        (
            "bad_date.csv",
            _set(99, "ChargePeriodStart", "2024-02-30 00:00:00"),
            "bad_date.csv row 100 column ChargePeriodStart: '2024-02-30 00:00:00' is not a date-time",
        ),
        (
            "bad_currency.csv",
            _set(0, "BillingCurrency", "US$"),
            "bad_currency.csv row 1 column BillingCurrency: 'US$' is not an ISO 4217 currency code",
        ),
        (
            "bad_tags.csv",
            _set(1, "Tags", "[1, 2]"),
            "bad_tags.csv row 2 column Tags: '[1, 2]' is not a JSON object",
        ),
        (
            "null_required.csv",
            _set(9, "ServiceName", "NULL"),
            "null_required.csv row 10 column ServiceName: is empty, but FOCUS requires a value",
        ),
    ],
)
def test_a_malformed_file_fails_whole_and_leaves_previous_data(tmp_path, name, change, message):
    # given
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))
    before, rollups = lines(account), CostDailyRollup.objects.filter(account=account).count()
    synced = CloudAccount.objects.get(id=account.id).last_synced_at
    bad = sample_with(tmp_path, name, change)
    # when
    with pytest.raises(PermanentError) as failure:
        focus_file_import(account=account, path=str(bad))
    # then
    assert message in str(failure.value)
    assert "Nothing was imported" in str(failure.value)
    assert lines(account) == before
    assert CostDailyRollup.objects.filter(account=account).count() == rollups
    assert CloudAccount.objects.get(id=account.id).last_synced_at == synced


def test_every_bad_row_is_counted_with_up_to_five_examples(tmp_path):
    # given
    def many_bad(header, rows):
        for index in (3, 10, 20, 30, 40, 50, 60):
            rows[index]["ListCost"] = "1,5"

    bad = sample_with(tmp_path, "many.csv", many_bad)
    # when
    with pytest.raises(PermanentError) as failure:
        focus_file_import(account=CloudAccountFactory(), path=str(bad))
    # then
    assert "many.csv row 4 column ListCost: '1,5' is not a decimal (6 more rows with this problem)" in str(
        failure.value
    )
    violation = failure.value.report.violations[("decimal_type", "ListCost")]
    assert violation.count == 7
    assert [e["row"] for e in violation.examples] == [4, 11, 21, 31, 41]


def test_a_truncated_gzip_fails_and_leaves_previous_data(tmp_path):
    # given
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))
    before = lines(account)
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(gzip.compress(SAMPLE.read_bytes())[:-400])
    # when
    with pytest.raises(PermanentError) as failure:
        focus_file_import(account=account, path=str(truncated))
    # then
    assert "cut.csv.gz" in str(failure.value)
    assert "truncated or unreadable" in str(failure.value)
    assert lines(account) == before


def test_a_corrupt_gzip_fails_and_leaves_previous_data(tmp_path):
    # given: the deflate stream damaged where the header is read directly (ISA-L raises an error of its own there)
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))
    before = lines(account)
    data = bytearray(gzip.compress(SAMPLE.read_bytes()))
    data[len(data) // 2 : len(data) // 2 + 64] = b"x" * 64  # read through Arrow
    data[40:104] = b"x" * 64  # and in the header, read directly
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(bytes(data))
    # when
    with pytest.raises(PermanentError) as failure:
        focus_file_import(account=account, path=str(corrupt))
    # then
    assert "corrupt.csv.gz" in str(failure.value)
    assert "truncated or unreadable" in str(failure.value)
    assert lines(account) == before


def test_a_bad_file_in_a_folder_fails_the_good_ones_too(tmp_path):
    # given
    folder = tmp_path / "exports"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "a.csv")
    sample_with(folder, "b.csv", _set(0, "BilledCost", "x"))
    account = CloudAccountFactory(settings={"path": str(folder)})
    # when
    with pytest.raises(PermanentError, match="b.csv row 1 column BilledCost"):
        account_cost_sync(account_id=account.id)
    # then
    assert CostLineItem.objects.filter(account=account).count() == 0


def test_missing_path_and_other_providers_are_permanent_errors(tmp_path):
    # given
    nowhere = CloudAccountFactory(settings={"path": str(tmp_path / "missing")})
    unknown = CloudAccountFactory(provider="oracle")  # no such connector (yet)
    # when / then
    with pytest.raises(PermanentError, match="does not exist"):
        account_cost_sync(account_id=nowhere.id)
    with pytest.raises(PermanentError, match="oracle connector not available"):
        account_cost_sync(account_id=unknown.id)
    with pytest.raises(PermanentError, match="YYYY-MM"):
        account_cost_sync(account_id=nowhere.id, billing_period="2024-13")


# --- the command ---


def test_import_focus_command_creates_the_account_and_prints_periods_and_report(capsys):
    # when
    call_command("import_focus", str(SAMPLE), "--account", "cli-focus")
    # then
    out = capsys.readouterr().out
    account = CloudAccount.objects.get(name="cli-focus")
    assert account.provider == "focus" and account.settings["path"] == str(SAMPLE)
    assert "2024-09: 999 rows" in out and "2024-10: 1 rows" in out
    assert "not_null ContractedCost: 7 row(s)" in out
    assert CostLineItem.objects.filter(account=account).count() == SAMPLE_ROWS


def test_import_focus_command_fails_with_the_message_on_a_bad_file(tmp_path):
    # given
    bad = sample_with(tmp_path, "bad.csv", _set(16, "BilledCost", "abc"))
    # when / then
    with pytest.raises(CommandError, match="bad.csv row 17 column BilledCost: 'abc' is not a decimal"):
        call_command("import_focus", str(bad), "--account", "cli-bad")

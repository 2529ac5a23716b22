"""The focus connector on its own: file discovery, streaming, value formats and the FOCUS rule report."""

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from finops.errors import PermanentError
from providers_app.connectors import focus as focus_connector
from providers_app.connectors import get_cost_source, get_resource_source
from providers_app.connectors.focus import FocusFileSource
from tests.providers_app.focus_files import SAMPLE, SAMPLE_ROWS, sample_rows, sample_with, write_csv


def account(path) -> SimpleNamespace:
    return SimpleNamespace(name="files", provider="focus", settings={"path": str(path)})


def read(path, **kwargs) -> tuple[FocusFileSource, list]:
    source = FocusFileSource(account(path))
    return source, list(source.batches(**kwargs))


def one_row_file(tmp_path, **values) -> str:
    header, rows = sample_rows()
    row = rows[0]
    for column, value in values.items():
        if column not in header:
            header.append(column)
        row[column] = value
    return write_csv(tmp_path / "one.csv", header, [row])


def test_large_files_stream_in_batches_with_row_numbers_running_on(tmp_path, monkeypatch):
    # given: small blocks, so the 1,000 rows come in many batches; a bad value deep in the file
    monkeypatch.setattr(focus_connector, "CSV_BLOCK_SIZE", 64 * 1024)
    bad = sample_with(tmp_path, "deep.csv", lambda h, rows: rows[900].update(BilledCost="1.2.3"))
    # when
    good_source, batches = read(SAMPLE)
    bad_source, bad_batches = read(bad)
    # then
    assert len(batches) > 3
    assert sum(b.table.num_rows for b in batches) == good_source.rows_read == SAMPLE_ROWS
    assert [b.first_row for b in batches] == [1] + [
        sum(x.table.num_rows for x in batches[:i]) + 1 for i in range(1, len(batches))
    ]
    assert bad_source.rows_read == SAMPLE_ROWS  # checking went on to the end
    assert bad_source.report.errors[0].examples[0]["row"] == 901
    assert bad_source.report.error_message().startswith("deep.csv row 901 column BilledCost: '1.2.3' is not a decimal")
    assert sum(b.table.num_rows for b in bad_batches) < SAMPLE_ROWS  # nothing after the error is handed out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-09-01 00:00:00", datetime(2024, 9, 1, tzinfo=UTC)),
        ("2024-09-01T00:00:00Z", datetime(2024, 9, 1, tzinfo=UTC)),
        ("2024-09-01T02:30:00+02:00", datetime(2024, 9, 1, 0, 30, tzinfo=UTC)),
        ("2024-09-01", datetime(2024, 9, 1, tzinfo=UTC)),
        ("2024-09-01T00:00:00.250Z", datetime(2024, 9, 1, 0, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_date_times_in_iso_8601_forms_are_utc(tmp_path, text, expected):
    # given
    path = one_row_file(tmp_path, ChargePeriodStart=text)
    # when
    source, batches = read(path)
    # then
    assert not source.report.has_errors
    assert batches[0].table["ChargePeriodStart"][0].as_py() == expected


def test_decimals_stay_exact_text_and_over_precise_ones_are_reported(tmp_path):
    # given
    path = one_row_file(tmp_path, BilledCost=" 1.5E-3 ", ListCost="0.1234567890123456789")
    # when
    source, batches = read(path)
    # then
    table = batches[0].table
    assert table["BilledCost"][0].as_py() == "1.5E-3"
    assert table["ListCost"][0].as_py() == "0.1234567890123456789"
    (warning,) = source.report.violations.values()
    assert (warning.rule, warning.column, warning.severity) == ("decimal_precision", "ListCost", "warning")


def test_custom_columns_are_ignored_and_reported_and_1_2_columns_detected(tmp_path):
    # given
    path = one_row_file(tmp_path, x_CostCenter="42", InvoiceId="INV-1", ServiceSubcategory="Other (Compute)")
    # when
    source, batches = read(path)
    # then
    assert source.report.unknown_columns == {"one.csv": ["Id", "x_CostCenter"]}
    assert source.report.versions == {"one.csv": "1.2"}
    assert "x_CostCenter" not in batches[0].table.column_names
    assert batches[0].table["InvoiceId"][0].as_py() == "INV-1"
    assert batches[0].table.num_columns == 57


def test_a_duplicated_column_refuses_the_file(tmp_path):
    # given
    path = tmp_path / "dup.csv"
    lines = SAMPLE.read_text().splitlines()
    path.write_text(lines[0] + ',"BilledCost"\n' + lines[1] + ",1\n")
    # when
    source, batches = read(path)
    # then
    assert batches == []
    assert "dup.csv column BilledCost: appears more than once" in source.report.error_message()


def test_lowercase_allowed_values_and_currencies_are_normalised_with_a_warning(tmp_path):
    # given
    path = one_row_file(tmp_path, ChargeCategory="usage", BillingCurrency="usd")
    # when
    source, batches = read(path)
    # then
    assert not source.report.has_errors
    assert batches[0].table["ChargeCategory"][0].as_py() == "Usage"
    assert batches[0].table["BillingCurrency"][0].as_py() == "USD"
    assert {v.column for v in source.report.violations.values()} == {"ChargeCategory", "BillingCurrency"}


def test_folder_listing_and_unsupported_paths(tmp_path):
    # given
    (tmp_path / "b.parquet").write_bytes(b"")
    (tmp_path / "a.csv.gz").write_bytes(b"")
    (tmp_path / "c.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    # when / then
    assert [p.name for p in focus_connector.source_files(tmp_path)] == ["a.csv.gz", "b.parquet"]
    with pytest.raises(PermanentError, match="no \\*.csv"):
        focus_connector.source_files(empty)
    with pytest.raises(PermanentError, match="not a FOCUS export"):
        focus_connector.source_files(tmp_path / "c.json")
    with pytest.raises(PermanentError, match="has no settings.path"):
        FocusFileSource(SimpleNamespace(name="x", provider="focus", settings={}))


def test_a_provider_without_a_connector_is_a_permanent_error():
    # given
    cloud = SimpleNamespace(name="cloud", provider="oracle", settings={})
    # when / then
    with pytest.raises(PermanentError, match="oracle connector not available"):
        get_cost_source(cloud)
    with pytest.raises(PermanentError, match="oracle connector not available"):
        get_resource_source(cloud)
    assert isinstance(get_cost_source(account(SAMPLE)), FocusFileSource)

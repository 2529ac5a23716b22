"""FOCUS test files: the real sample, and malformed or re-encoded copies of it written to a temporary folder."""

import csv
import gzip
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

SAMPLE = Path(__file__).resolve().parent / "data" / "focus_sample_1.0.csv"
SAMPLE_ROWS = 1000


def sample_rows() -> tuple[list[str], list[dict]]:
    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def expected_by_period() -> tuple[Counter, dict]:
    """Rows and BilledCost per billing period, computed from the CSV text with Decimal, independently of the code."""
    _, rows = sample_rows()
    counts, totals = Counter(), defaultdict(Decimal)
    for row in rows:
        period = row["BillingPeriodStart"][:7]
        counts[period] += 1
        totals[period] += Decimal(row["BilledCost"])
    return counts, dict(totals)


def write_csv(path: Path, header: list[str], rows: list[dict]) -> Path:
    """Like the sample: the literal NULL stays unquoted, as real exports write it."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows)
    return path


def sample_with(tmp_path: Path, name: str, change) -> Path:
    """A copy of the sample after `change(header, rows)` edits it in place."""
    header, rows = sample_rows()
    change(header, rows)
    return write_csv(tmp_path / name, header, rows)


def sample_as_parquet(path: Path) -> Path:
    """The sample as Parquet with every column as text, NULL as a real null (how a CSV-to-Parquet job writes it)."""
    header, _ = sample_rows()
    table = pcsv.read_csv(
        SAMPLE,
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, null_values=["NULL"], strings_can_be_null=True
        ),
    )
    pq.write_table(table, path)
    return path

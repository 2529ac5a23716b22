"""Azure export mapping against the FOCUS path: how much the Azure column mapping costs on top of reading.

    .venv/bin/python bench/azure_export.py --rows 500000

Writes N rows of an Azure "Cost and usage details" (actual cost) CSV, maps them once to FOCUS and writes that
as a FOCUS CSV (the baseline file: the same rows, already FOCUS). Then times, three times each, alternating
(best kept), the connector's own per-file path minus storage and the database: read the CSV in batches (as
ExportCostSource does) + `focus.normalise` for the FOCUS file (baseline), and read + `ACTUAL.apply` (the
mapping) + normalise for the Azure file. No database, no network: it isolates the mapping. Last line:
`azure_export rows=N focus_rows_per_s=... azure_rows_per_s=... ratio=...`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers_app.connectors.azure import ACTUAL, canonical_columns  # noqa: E402
from providers_app.connectors.base import RuleReport  # noqa: E402
from providers_app.connectors.focus import CSV_BLOCK_SIZE, normalise  # noqa: E402
from tests.providers_app.azure.exports import ACTUAL_HEADER, actual_rows  # noqa: E402


def batches(path: Path, names: list[str]):
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_SIZE, column_names=names, skip_rows=1),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, null_values=[""], strings_can_be_null=True
        ),
    )
    yield from reader


def run(path: Path, names: list[str], mapping) -> tuple[int, float]:
    report = RuleReport()
    started, rows, first = time.perf_counter(), 0, 1
    for batch in batches(path, names):
        table = mapping.apply(batch) if mapping else batch
        normalise(table, file=path.name, first_row=first, report=report)
        rows += batch.num_rows
        first += batch.num_rows
    elapsed = time.perf_counter() - started
    if report.has_errors:
        raise SystemExit(report.error_message())
    return rows, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-azure-") as tmp:
        azure_csv, focus_csv = Path(tmp) / "azure.csv", Path(tmp) / "focus.csv"
        template = actual_rows("2024-05", 2000)  # 2,000 distinct rows (31 days, 2 subscriptions, 8 resources)
        with open(azure_csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=ACTUAL_HEADER)
            writer.writeheader()
            for i in range(args.rows):
                writer.writerow(template[i % len(template)])
        names = canonical_columns(ACTUAL_HEADER)
        mapped = [ACTUAL.apply(b) for b in batches(azure_csv, names)]
        pcsv.write_csv(pa.concat_tables(mapped), focus_csv)
        focus_names = pcsv.read_csv(focus_csv, read_options=pcsv.ReadOptions(skip_rows_after_names=10**9)).column_names
        results = {"focus": [], "azure": []}
        for _ in range(3):
            results["focus"].append(run(focus_csv, focus_names, None))
            results["azure"].append(run(azure_csv, names, ACTUAL))
    rates = {kind: max(n / t for n, t in runs) for kind, runs in results.items()}
    for kind, runs in results.items():
        print(f"{kind}: " + ", ".join(f"{n / t:,.0f} rows/s ({t:.2f} s)" for n, t in runs))
    print(
        f"azure_export rows={args.rows} focus_rows_per_s={rates['focus']:.0f} "
        f"azure_rows_per_s={rates['azure']:.0f} ratio={rates['azure'] / rates['focus']:.2f}"
    )


if __name__ == "__main__":
    main()

"""AWS CUR mapping cost: CUR 2.0 rows -> FOCUS 1.2 (the connector's rule table + the FOCUS checks) against the
FOCUS checks alone on the same rows already in FOCUS form (what a FOCUS export costs), in memory, no database.

    python bench/aws_cur.py --rows 200000

Rows come from tests/providers_app/aws/cur_files.py (every line item type, tags, Savings Plan / RI lines), in
batches of 50,000 as the export reader yields them, once as CSV text (every column a string) and once typed as
AWS writes Parquet (double money, timestamps, map columns). Best of --repeat runs. Last line: key=value figures.
"""

import argparse
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
os.environ.setdefault("DEBUG", "1")

BATCH = 50_000


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import django

    django.setup()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from providers_app.connectors.aws.cur import CUR
    from providers_app.connectors.base import RuleReport
    from providers_app.connectors.focus import normalise
    from tests.providers_app.aws import cur_files as f

    rows = f.cur2_rows("2024-09", BATCH - 3)  # + the period's 3 fee lines = one batch
    text = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in f.CUR2_COLUMNS})
    typed = pq.read_table(io.BytesIO(f.cur2_parquet(rows)))
    batches = max(1, args.rows // BATCH)
    figures = {"rows": batches * BATCH}
    for name, table in (("csv", text), ("parquet", typed)):
        focus_form = CUR.apply(table)  # the same rows, already FOCUS: the baseline's input

        def baseline(focus_form=focus_form):
            for _ in range(batches):
                normalise(focus_form, file="x", first_row=1, report=RuleReport())

        def mapped(table=table):
            for _ in range(batches):
                report = RuleReport()
                normalise(CUR.apply(table), file="x", first_row=1, report=report)
                assert not report.has_errors, report.error_message()

        base_s, cur_s = best(baseline, args.repeat), best(mapped, args.repeat)
        figures[f"{name}_focus_rows_per_s"] = int(figures["rows"] / base_s)
        figures[f"{name}_cur_rows_per_s"] = int(figures["rows"] / cur_s)
        figures[f"{name}_ratio"] = round(base_s / cur_s, 2)
        print(f"{name}: FOCUS checks alone {figures[f'{name}_focus_rows_per_s']:,} rows/s, "
              f"CUR mapping + checks {figures[f'{name}_cur_rows_per_s']:,} rows/s")  # fmt: skip
    print("aws_cur " + " ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

"""Daily and tag rollups of an import, summed on the client while PostgreSQL is busy with the COPY.

Ingestion used to rebuild the rollups of the days it touched with GROUP BY queries over the lines it had just
written: two more passes over every row (and a JSON parse per row and tag key), after the load. The sums are
cheap to take from the Arrow batches on their way to the COPY, on the other core, so `NewRollups` keeps them:
per day × service × sub-account × region × currency (× the Tags text when tag keys are active), with exact
decimal sums. Values are rounded to the column's 15 decimals first, half away from zero, as PostgreSQL rounds
them into numeric(38, 15), so each sum equals the one SQL would compute over the stored lines.

`ingest._replace_and_roll_up` decides per day whether these sums are the day's whole truth (the day's lines
all belong to the periods being replaced, the usual case) or the day must be summed in SQL (lines of another
billing period fall on it).
"""

from __future__ import annotations

import io
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

MONEY_TYPE = pa.decimal128(38, 15)
MONEY = ("billed_cost", "effective_cost", "list_cost")
KEYS = ("day", "service_name", "sub_account_id", "region_id", "billing_currency")
QUANTUM = Decimal("1e-15")
# Merge the per-batch partial sums once they hold this many rows (and twice the merged size): memory stays
# bounded by the number of groups, and merging costs O(groups) amortised, not O(groups) per batch.
MERGE_ROWS = 100_000
CSV_OPTIONS = pcsv.WriteOptions(include_header=False, quoting_style="needed")

DAILY_COLUMNS = (
    "account_id", "day", "billing_period_start", "service_name", "service_category", "sub_account_id",
    "region_id", "billing_currency", "billed_cost", "effective_cost", "list_cost", "line_count",
)  # fmt: skip
TAG_COLUMNS = (
    "account_id", "day", "tag_key", "tag_value", "service_name", "sub_account_id", "region_id",
    "billing_currency", "billed_cost", "effective_cost", "list_cost", "line_count",
)  # fmt: skip


def money(arr: pa.Array) -> pa.Array:
    """Validated decimal text -> decimal128(38, 15), rounded half away from zero like numeric(38, 15) input."""
    try:
        return arr.cast(MONEY_TYPE)
    except pa.ArrowInvalid:
        pass
    try:
        # More than 15 decimals: the 16th digit alone decides a half-away-from-zero rounding.
        cut = pc.replace_substring_regex(arr, r"(\.\d{16})\d+", r"\1").cast(pa.decimal128(38, 16))
        return pc.round(cut, 15, round_mode="half_towards_infinity").cast(MONEY_TYPE)
    except pa.ArrowInvalid:
        # Exponent forms with long mantissas, 22+ integer digits: exact, slow, and rare.
        values = [None if v is None else Decimal(v).quantize(QUANTUM, rounding=ROUND_HALF_UP) for v in arr.to_pylist()]
        return pa.array(values, MONEY_TYPE)


class NewRollups:
    """Partial sums of the rows loaded by one import, grouped as the rollup tables are."""

    def __init__(self, *, with_tags: bool):
        self.keys = [*KEYS, "tags"] if with_tags else list(KEYS)
        self.parts: list[pa.Table] = []
        self.pending = 0
        self.merged_rows = 0
        self.periods: set = set()  # BillingPeriodStart values of the loaded rows
        self.days: set = set()

    def add(self, table: pa.Table) -> None:
        columns = {
            "day": pc.cast(table["ChargePeriodStart"], pa.date32()),
            "service_name": pc.fill_null(table["ServiceName"], ""),
            "sub_account_id": pc.fill_null(table["SubAccountId"], ""),
            "region_id": pc.fill_null(table["RegionId"], ""),
            "billing_currency": table["BillingCurrency"],
        }
        if "tags" in self.keys:
            columns["tags"] = table["Tags"]
        columns |= {
            "billed_cost": money(table["BilledCost"]),
            "effective_cost": money(table["EffectiveCost"]),
            "list_cost": money(table["ListCost"]),
            "billing_period_start": table["BillingPeriodStart"],
            "service_category": table["ServiceCategory"],
        }
        columns["line_count"] = pa.array(np.ones(table.num_rows, dtype=np.int64))
        part = regroup(pa.table(columns), self.keys)  # each row a group of one line: the same sums, once
        self.periods.update(pc.unique(table["BillingPeriodStart"]).to_pylist())
        self.days.update(pc.unique(columns["day"]).to_pylist())
        self.parts.append(part)
        self.pending += part.num_rows
        if self.pending > max(MERGE_ROWS, 2 * self.merged_rows):
            self._merge()

    def _merge(self) -> pa.Table | None:
        if len(self.parts) > 1:
            self.parts = [regroup(pa.concat_tables(self.parts), self.keys)]
        self.pending = 0
        self.merged_rows = self.parts[0].num_rows if self.parts else 0
        return self.parts[0] if self.parts else None

    def total(self) -> pa.Table | None:
        """All sums merged: one row per group."""
        return self._merge()

    def billed_by_currency(self) -> dict[str, Decimal]:
        table = self.total()
        if table is None:
            return {}
        per = regroup(table, ["billing_currency"])
        return {
            c: v.normalize()
            for c, v in zip(per["billing_currency"].to_pylist(), per["billed_cost"].to_pylist(), strict=True)
        }

    def daily_csv(self, account_id: int, days: set) -> bytes:
        """COPY csv of the daily rollup rows of `days` (DAILY_COLUMNS order)."""
        table = self._on_days(self.total(), days)
        if "tags" in self.keys:
            table = regroup(table, list(KEYS))
        return _csv(table, account_id, DAILY_COLUMNS)

    def tag_csv(self, account_id: int, days: set, values: dict[str, dict[str, str]]) -> bytes:
        """COPY csv of the tag rollup rows of `days`; `values[key][tags_text]` is `tags_text::jsonb ->> key`."""
        table = self._on_days(self.total(), days)
        out = []
        tags = table["tags"]
        for key, by_text in values.items():
            texts = pa.array(list(by_text), pa.string())
            found = pc.take(pa.array(list(by_text.values()), pa.string()), pc.index_in(tags, value_set=texts))
            per_key = table.drop_columns(["tags"]).append_column("tag_value", pc.fill_null(found, ""))
            per_key = regroup(per_key, [*KEYS, "tag_value"])
            out.append(per_key.append_column("tag_key", pa.array([key] * per_key.num_rows, pa.string())))
        if not out:
            return b""
        return _csv(pa.concat_tables(out), account_id, TAG_COLUMNS)

    def distinct_tags(self) -> list[str]:
        table = self.total()
        if table is None or "tags" not in self.keys:
            return []
        return [t for t in pc.unique(table["tags"]).to_pylist() if t is not None]

    @staticmethod
    def _on_days(table: pa.Table | None, days: set) -> pa.Table | None:
        if table is None or not days:
            return None
        return table.filter(pc.is_in(table["day"], value_set=pa.array(sorted(days), pa.date32())))


def regroup(table: pa.Table, keys: list[str]) -> pa.Table:
    """Sums of sums, counts of counts and minimum of minimums over `keys` (a coarser or equal grouping)."""
    aggregates = [*((m, "sum") for m in MONEY), ("line_count", "sum")]
    if "billing_period_start" in table.column_names:
        aggregates += [("billing_period_start", "min"), ("service_category", "min")]
    out = table.group_by(keys, use_threads=False).aggregate(aggregates)
    names = {f"{m}_sum": m for m in MONEY} | {"line_count_sum": "line_count"}
    names |= {"billing_period_start_min": "billing_period_start", "service_category_min": "service_category"}
    return out.rename_columns({k: v for k, v in names.items() if k in out.column_names})


def _csv(table: pa.Table | None, account_id: int, columns: tuple[str, ...]) -> bytes:
    if table is None or table.num_rows == 0:
        return b""
    n = table.num_rows
    if "service_category" in columns:
        table = table.set_column(
            table.column_names.index("service_category"),
            "service_category",
            pc.fill_null(table["service_category"], ""),
        )
    table = table.append_column("account_id", pa.array([account_id] * n, pa.int64()))
    buffer = io.BytesIO()
    pcsv.write_csv(table.select(list(columns)), buffer, CSV_OPTIONS)
    return buffer.getvalue()

"""Provider columns to FOCUS 1.2: each provider's mapping is a table of rules, one per FOCUS column, in code.

A connector declares its mapping as data, e.g.

    CUR2 = ColumnMapping("AWS CUR 2.0", [
        Rule("BilledCost", "line_item_unblended_cost", required=True),
        Rule("ProviderName", const="AWS"),
        Rule("ChargeCategory", "line_item_line_item_type", fn=lookup({"Usage": "Usage", "Tax": "Tax"}),
             how="Usage, DiscountedUsage, SavingsPlanCoveredUsage -> Usage; Tax -> Tax; ..."),
    ])

and `mapping.apply(batch)` returns a table with FOCUS column names, which `focus.normalise` then checks
and types exactly as for a FOCUS file (so every provider gets the same rule checks and row-level errors).
Every rule says where its value comes from (`sources`) and, when it is derived, how (`how`);
`ColumnMapping.markdown()` prints the table for the docs. Transformations are vectorised pyarrow compute:
Python only loops over distinct values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from providers_app import focus_schema as focus

# A derivation gets the source columns (in `sources` order, as string arrays; absent ones all-null) and
# the batch, and returns one array of the batch's length.
Derive = Callable[..., pa.Array]


@dataclass(frozen=True)
class Rule:
    target: str  # the FOCUS 1.2 column
    source: str | Sequence[str] | None = None  # provider column(s) read, in the order `fn` takes them
    const: str | None = None  # a constant value instead of a source
    fn: Derive | None = None  # None: the single source column as it is
    how: str = ""  # the derivation, in words (required when fn is set)
    required: bool = False  # the file must have the (first) source column, else the file is refused

    def __post_init__(self):
        if self.target not in focus.BY_NAME:
            raise ValueError(f"{self.target!r} is not a FOCUS 1.2 column")
        if self.fn is not None and not self.how:
            raise ValueError(f"rule for {self.target} derives its value: say how")

    @property
    def sources(self) -> tuple[str, ...]:
        if self.source is None:
            return ()
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    def describe(self) -> str:
        if self.const is not None:
            return f"always {self.const!r}" + (f" ({self.how})" if self.how else "")
        text = " + ".join(f"`{s}`" for s in self.sources) or "(derived)"
        return f"{text}: {self.how}" if self.how else text


@dataclass
class ColumnMapping:
    name: str  # e.g. "AWS CUR 2.0 (legacy columns)"
    rules: list[Rule]
    # Source columns that are read by no rule but are known and expected (not reported as ignored).
    known_unmapped: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self):
        targets = [rule.target for rule in self.rules]
        duplicates = {t for t in targets if targets.count(t) > 1}
        if duplicates:
            raise ValueError(f"{self.name}: more than one rule for {', '.join(sorted(duplicates))}")

    @property
    def source_columns(self) -> set[str]:
        return {s for rule in self.rules for s in rule.sources}

    def missing_required(self, names: Sequence[str]) -> list[str]:
        present = set(names)
        return [rule.sources[0] for rule in self.rules if rule.required and rule.sources[0] not in present]

    def apply(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """The batch's FOCUS columns (names as FOCUS, values as the provider gave them, mostly text)."""
        n = batch.num_rows
        names = batch.schema.names
        out: dict[str, pa.Array] = {}
        for rule in self.rules:
            columns = [_column(batch, names, s, n) for s in rule.sources]
            if rule.const is not None:
                out[rule.target] = pa.array([rule.const] * n, pa.string()) if n else pa.array([], pa.string())
            elif rule.fn is not None:
                out[rule.target] = rule.fn(*columns)
            elif columns:
                out[rule.target] = columns[0]
        return pa.table(out) if out else pa.table({})

    def markdown(self) -> str:
        lines = [f"### {self.name}", "", "| FOCUS 1.2 column | from |", "|---|---|"]
        lines += [f"| {rule.target} | {rule.describe()} |" for rule in self.rules]
        return "\n".join(lines)


def _column(batch, names: list[str], name: str, n: int) -> pa.Array:
    if name not in names:
        return pa.nulls(n, pa.string())
    arr = batch.column(names.index(name))
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


# --- derivations used by several providers ---


def as_text(arr: pa.Array) -> pa.Array:
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        return arr.cast(pa.string())
    return pc.cast(arr, pa.string())


def lookup(table: Mapping[str, str | None], *, default: str | None = None, keep_unknown: bool = False) -> Derive:
    """Map values through `table` (case-insensitive); others become `default`, or stay as they are."""
    folded = {key.casefold(): value for key, value in table.items()}

    def derive(arr: pa.Array) -> pa.Array:
        arr = as_text(arr)
        values = pc.unique(arr).to_pylist()
        mapped = {}
        for value in values:
            if value is None:
                continue
            hit = folded.get(value.casefold(), value if keep_unknown else default)
            mapped[value] = hit
        keys = pa.array(list(mapped), pa.string())
        targets = pa.array(list(mapped.values()), pa.string())
        return pc.take(targets, pc.index_in(arr, value_set=keys))

    return derive


def coalesce(*arrays: pa.Array) -> pa.Array:
    """The first non-empty value of the sources, left to right."""
    texts = [pc.if_else(pc.equal(as_text(a), ""), pa.scalar(None, pa.string()), as_text(a)) for a in arrays]
    return pc.coalesce(*texts)


def strptime(fmt: str) -> Derive:
    """Parse dates/times written as `fmt` (e.g. "%m/%d/%Y" in Azure exports) into UTC timestamps."""

    def derive(arr: pa.Array) -> pa.Array:
        text = pc.utf8_trim_whitespace(as_text(arr))
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        parsed = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
        # A value that does not parse is passed on as text, so the FOCUS check names its row.
        return pc.if_else(pc.is_null(parsed), text, pc.strftime(parsed, "%Y-%m-%dT%H:%M:%SZ"))

    return derive


def negate(arr: pa.Array) -> pa.Array:
    """A decimal written as text, with its sign flipped (credits some providers give as positive)."""
    text = pc.utf8_trim_whitespace(as_text(arr))
    negative = pc.starts_with(text, "-")
    flipped = pc.if_else(negative, pc.utf8_slice_codeunits(text, 1), pc.binary_join_element_wise("-", text, ""))
    return pc.if_else(pc.or_(pc.equal(text, ""), pc.is_null(text)), text, flipped)

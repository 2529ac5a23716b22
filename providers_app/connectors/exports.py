"""Cost exports delivered as files in object storage (S3, Azure Blob, GCS): the part every cloud shares.

A cloud's export connector says which deliveries exist (billing period -> the files of its newest
delivery, with their ETags) and how to download one file; this base class skips the periods whose files
have not changed since the last successful load, downloads one file at a time to a temporary folder
(never the whole export in memory), reads it in batches, maps the provider's columns to FOCUS with the
delivery's ColumnMapping (or none: the export is FOCUS already) and runs the same FOCUS checks as a file
import. Errors name the object key, the row and the column.
"""

from __future__ import annotations

import hashlib
import tempfile
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .base import ERROR, CostBatch, CostSource
from .focus import (
    PARQUET_BATCH_ROWS,
    READ_ERRORS,
    csv_block_size,
    normalise,
    open_export,
    parquet_chunks_check,
    read_header,
    report_read_error,
)
from .mapping import ColumnMapping


@dataclass(frozen=True)
class ExportFile:
    key: str  # object key / blob name, as the error messages show it
    etag: str  # what changes when the object changes (ETag, Content-MD5, generation)
    size: int = 0

    @property
    def format(self) -> str:
        name = self.key.lower()
        if name.endswith(".parquet") or name.endswith(".snappy.parquet"):
            return "parquet"
        if name.endswith(".gz"):
            return "csv.gz"
        return "csv"


@dataclass
class Delivery:
    """One billing period's complete export: the files of its newest run."""

    period: str  # "YYYY-MM"
    files: list[ExportFile]
    mapping: ColumnMapping | None = None  # None: the files are FOCUS already
    label: str = ""  # e.g. the manifest key or run id, for messages
    extra: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        text = "\n".join(f"{f.key}\t{f.etag}\t{f.size}" for f in sorted(self.files, key=lambda f: f.key))
        return hashlib.sha256(f"{self.mapping.name if self.mapping else 'FOCUS'}\n{text}".encode()).hexdigest()


class ExportCostSource(CostSource):
    @abstractmethod
    def deliveries(self, *, billing_period: str | None = None) -> list[Delivery]:
        """The newest delivery of every period (of `billing_period` only, when given), oldest period first."""

    @abstractmethod
    def download(self, file: ExportFile, dest: Path) -> None:
        """Stream the object to `dest` (SDK errors translated to TransientError / PermanentError)."""

    def batches(self, *, billing_period: str | None = None) -> Iterator[CostBatch]:
        deliveries = self.deliveries(billing_period=billing_period)
        with tempfile.TemporaryDirectory(prefix="finops-export-") as tmp:
            for delivery in deliveries:
                if self.known_fingerprints.get(delivery.period) == delivery.fingerprint:
                    self.unchanged_periods.append(delivery.period)
                    continue
                self.fingerprints[delivery.period] = delivery.fingerprint
                for file in delivery.files:
                    local = Path(tmp) / "export"
                    self.download(file, local)
                    self.files.append(file.key)
                    try:
                        yield from self._file_batches(delivery, file, local, billing_period)
                    finally:
                        local.unlink(missing_ok=True)

    def _file_batches(
        self, delivery: Delivery, file: ExportFile, local: Path, billing_period: str | None
    ) -> Iterator[CostBatch]:
        row = 1
        try:
            for raw in self._read(file, local, delivery.mapping):
                n = raw.num_rows
                if n == 0:
                    continue
                self.rows_read += n
                mapped = delivery.mapping.apply(raw) if delivery.mapping else raw
                table = normalise(mapped, file=file.key, first_row=row, report=self.report)
                counts = pc.value_counts(pc.strftime(table["BillingPeriodStart"], "%Y-%m"))
                periods = {c["values"].as_py(): c["counts"].as_py() for c in counts if c["values"].is_valid}
                first = row
                row += n
                if billing_period and set(periods) - {billing_period}:
                    wanted = pc.fill_null(
                        pc.equal(pc.strftime(table["BillingPeriodStart"], "%Y-%m"), billing_period), False
                    )
                    numbers = pc.add(pc.indices_nonzero(wanted), pa.scalar(first, pa.uint64()))
                    table = table.filter(wanted)
                    self.rows_skipped += n - table.num_rows
                    kept = {billing_period: table.num_rows} if table.num_rows else {}
                    batch = CostBatch(file.key, first, table, kept, numbers)
                else:
                    batch = CostBatch(file.key, first, table, periods)
                if not self.report.has_errors and batch.table.num_rows:
                    yield batch
        except _Refused:
            return
        except READ_ERRORS as exc:
            report_read_error(self.report, exc, file=file.key, row=row)

    def _read(self, file: ExportFile, local: Path, mapping: ColumnMapping | None) -> Iterator[pa.RecordBatch]:
        if file.format == "parquet":
            parquet = pq.ParquetFile(local)
            names = self.column_names(parquet.schema_arrow.names)
            self._check_header(file, names, mapping)
            wanted = self._wanted(names, mapping)
            in_file = dict(zip(names, parquet.schema_arrow.names, strict=True))
            parquet_chunks_check(parquet, [in_file[n] for n in wanted])
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[in_file[n] for n in wanted]):
                yield batch.rename_columns(wanted)
            return
        gz = file.format == "csv.gz"
        names = read_header(local, gz=gz)
        if not names:
            raise pa.ArrowInvalid("the file is empty (no header row)")
        names = self.column_names(names)
        self._check_header(file, names, mapping)
        wanted = self._wanted(names, mapping)
        with open_export(local, gz=gz) as fh:
            reader = pcsv.open_csv(
                fh,
                read_options=pcsv.ReadOptions(block_size=csv_block_size(), column_names=names, skip_rows=1),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    # Every column as text: money stays exact, and inference cannot misread a later block.
                    column_types={n: pa.string() for n in names},
                    include_columns=wanted,
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
            yield from reader

    def column_names(self, names: list[str]) -> list[str]:
        """The names the mapping reads for a file's header (e.g. case-folded, aliases resolved); unique."""
        return names

    def _wanted(self, names: list[str], mapping: ColumnMapping | None) -> list[str]:
        if mapping is None:
            from providers_app import focus_schema as focus

            return [n for n in names if n in focus.BY_NAME]
        return [n for n in names if n in mapping.source_columns]

    def _check_header(self, file: ExportFile, names: list[str], mapping: ColumnMapping | None) -> None:
        if mapping is None:
            from .focus import MANDATORY_PRESENT

            missing = sorted(MANDATORY_PRESENT - set(names))
            problem = "is a mandatory FOCUS column and is missing from the file"
        else:
            missing = mapping.missing_required(names)
            problem = f"is needed for the {mapping.name} mapping and is missing from the file"
        for column in missing:
            self.report.add(
                rule="mandatory_columns_present",
                column=column,
                severity=ERROR,
                problem=problem,
                count=1,
                examples=[{"file": file.key, "row": None, "column": column}],
            )
        if missing:
            raise _Refused


class _Refused(Exception):
    """The header already failed a rule; the rows of that file are not read."""

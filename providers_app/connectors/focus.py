"""FOCUS files as a cost source: stream CSV, CSV.gz or Parquet (FOCUS 1.0-1.2), check the FOCUS rules, map to 1.2.

The work is vectorised with pyarrow compute on batches of a few MiB: nothing loads a whole file, and
Python only loops over *distinct* values (JSON text, disallowed values) or over the rows of an error path.
Values stay text until PostgreSQL parses them (COPY), so money is never a float on the way.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from django.conf import settings
from isal import igzip, isal_zlib

from finops.errors import PermanentError
from providers_app import focus_schema as focus

from .base import ERROR, WARNING, ConnectionReport, CostBatch, CostSource, RuleReport

CSV_BLOCK_SIZE = 4 << 20  # bytes per CSV batch
# What a damaged gzip raises besides OSError/EOFError (ISA-L's inflate error is not an OSError).
GZIP_ERRORS = (gzip.BadGzipFile, isal_zlib.error)
PARQUET_BATCH_ROWS = 50_000
SUFFIXES = (".csv", ".csv.gz", ".parquet")

# Columns the FOCUS 1.2 requirements model says MUST be present unconditionally (CostAndUsage-D-*-M);
# every one of them exists since FOCUS 1.0, so a 1.0 file must have them too.
MANDATORY_PRESENT = frozenset(
    {
        "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
        "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
        "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
        "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
    }
)  # fmt: skip

# FOCUS 1.1 and 1.2 only added columns (see `since` in focus_schema) and renamed none of 1.0's; the
# FOCUS 1.2 requirements model lists every 1.0 column under its 1.0 name. A future rename goes here.
RENAMED: dict[str, str] = {}

# ISO 4217 active codes (plus the fund and precious-metal codes FOCUS validators accept).
ISO_4217 = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
    CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
    GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD
    KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR
    NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN
    SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG
    XAU XBA XBB XBC XBD XCD XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWL""".split()  # noqa: SIM905
)
CURRENCY_COLUMNS = frozenset({"BillingCurrency", "PricingCurrency"})

DECIMAL_RE = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
# numeric(38, 15) holds 23 digits before the point; more would fail inside COPY with no row to name.
DECIMAL_TOO_BIG_RE = r"^[+-]?0*[1-9]\d{23,}(\.|$|[eE])"
DECIMAL_ROUNDED_RE = r"\.\d{16,}"
DATETIME_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
DATE_ONLY_RE = r"^\d{4}-\d{2}-\d{2}$"
HAS_ZONE_RE = r"(Z|[+-]\d{2}(:?\d{2})?)$"
TS = pa.timestamp("us", tz="UTC")
MONEY_TYPE = pa.decimal128(38, 15)


def open_export(path, mode: str = "rb", *, gz: bool | None = None, **kwargs):
    """An export file, decompressed when `gz` (default: the name ends in .gz). ISA-L's gzip reads 3x faster than
    zlib's (0.4 s instead of 1.4 s for 880 MB), and decompression is a tenth of a load's client time."""
    if str(path).lower().endswith(".gz") if gz is None else gz:
        return igzip.open(path, mode, **kwargs)
    return open(path, mode, **kwargs)  # noqa: SIM115 - the caller's with-statement closes it


def arrow_type(column: focus.Column) -> pa.DataType:
    return TS if column.type == focus.DATETIME else pa.string()


# --- where focus accounts may read (FOCUS_IMPORT_ROOT) ---


class FocusPathRefused(PermanentError):
    """A focus account's path is outside FOCUS_IMPORT_ROOT (or malformed): one message, whether it exists or not."""


def import_roots() -> list[Path]:
    """The folders focus accounts may read from, resolved (FOCUS_IMPORT_ROOT, several separated by os.pathsep)."""
    text = str(settings.FOCUS_IMPORT_ROOT or "")
    return [Path(part).resolve() for part in text.split(os.pathsep) if part.strip()]


def focus_path_resolve(path: str | Path) -> Path:
    """The account's path resolved inside FOCUS_IMPORT_ROOT, or FocusPathRefused.

    Relative paths are taken from the (first) root. `..` is refused outright, and the check is made on the path
    with every symlink resolved, so neither can lead out of the root. The message is the same whether the path
    exists, is a folder or a file: it tells nothing about the server's file system outside the root.
    """
    raw = str(path)
    roots = import_roots()
    refused = FocusPathRefused(
        f"FOCUS path {raw[:300]!r} is not inside the FOCUS import folder (FOCUS_IMPORT_ROOT, set by the operator)"
    )
    if not roots or not raw.strip() or "\x00" in raw or ".." in Path(raw).parts:
        raise refused
    candidate = Path(raw) if Path(raw).is_absolute() else roots[0] / raw
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        raise refused from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise refused
    return resolved


def focus_settings_problem(account_settings) -> str | None:
    """What is wrong with a focus account's settings.path for saving it (API, admin), or None."""
    path = (account_settings or {}).get("path") if isinstance(account_settings, dict) else None
    if path is None:
        return None  # no path yet: syncs say so
    if not isinstance(path, str):
        return "path: a folder or file name (text)"
    try:
        focus_path_resolve(path)
    except FocusPathRefused as exc:
        return f"path: {exc}"
    return None


def source_files(path: str | Path, *, confined: bool = False) -> list[Path]:
    """The export files at `path`: the file itself, or every *.csv, *.csv.gz, *.parquet in the folder, sorted.

    `confined`: `path` is an account's setting, resolved inside FOCUS_IMPORT_ROOT, and so is each file (a
    symlink in the folder pointing outside it is refused). An operator's command-line path is not confined.
    """
    root = focus_path_resolve(path) if confined else Path(path)
    if not root.exists():
        raise PermanentError(f"FOCUS path {str(path)!r} does not exist")
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
        if confined:
            files = [focus_path_resolve(p) for p in files]
        if not files:
            raise PermanentError(f"no *.csv, *.csv.gz or *.parquet file in {str(root)!r}")
        return files
    if not root.name.lower().endswith(SUFFIXES):
        raise PermanentError(f"{root.name}: not a FOCUS export (expected .csv, .csv.gz or .parquet)")
    return [root]


def files_fingerprint(files: list[Path]) -> str:
    """What changes when any of the files changes: each one's path, size, modification time and SHA-256.

    Size and mtime alone miss a same-size rewrite within the file system's timestamp granularity (or a copy
    that kept the mtime); the content hash does not, for about a second per GB read (a reload costs far more).
    """
    digest = hashlib.sha256(b"focus-files\n")
    for file in files:
        stat = file.stat()
        with open(file, "rb") as handle:
            content = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{file}\t{stat.st_size}\t{stat.st_mtime_ns}\t{content}\n".encode())
    return digest.hexdigest()


def scoped_fingerprint(files_fingerprint: str, scope: str) -> str:
    """The fingerprint recorded for a load of `scope` (one "YYYY-MM" period, or "*" for every period)."""
    return hashlib.sha256(f"{files_fingerprint}\n{scope}".encode()).hexdigest()


def detect_version(names: set[str]) -> str:
    since = {focus.BY_NAME[n].since for n in names if n in focus.BY_NAME}
    return max(since | {"1.0"})


class FocusFileSource(CostSource):
    """Reads `account.settings["path"]` (or an explicit path): one file or a folder of exports."""

    def __init__(self, account, path: str | Path | None = None):
        super().__init__(account)
        # The account's own path is confined to FOCUS_IMPORT_ROOT, checked again here at read time (the
        # setting may predate the root, or the root may have moved); an explicit path is the operator's.
        self.confined = not path
        path = path or (account.settings or {}).get("path")
        if not path:
            raise PermanentError(f"focus account {account.name!r} has no settings.path to read exports from")
        self.path = Path(path)

    def batches(self, *, billing_period: str | None = None) -> Iterator[CostBatch]:
        files = source_files(self.path, confined=self.confined)
        self.files = [str(f) for f in files]
        # Change detection, as the cloud exports do with ETags: the files' fingerprint, recorded (in
        # ExportState, once the load commits) for every period they yielded. A file holds any number of
        # periods, unknown until it is read, so an unchanged file set is recognised by its fingerprint on
        # the periods it loaded last time. The scope (one period, or all) is part of it: a whole-file sync
        # after a one-period sync still loads the other periods.
        content = files_fingerprint(files)
        whole = scoped_fingerprint(content, "*")
        fingerprint = whole if billing_period is None else scoped_fingerprint(content, billing_period)
        if billing_period is None:
            unchanged = sorted(p for p, known in self.known_fingerprints.items() if known == whole)
        else:
            known = self.known_fingerprints.get(billing_period)
            unchanged = [billing_period] if known in (whole, fingerprint) else []
        if unchanged:
            self.unchanged_periods.extend(unchanged)
            return
        periods: set[str] = set()
        for file in files:
            for batch in self._file_batches(file, billing_period):
                periods.update(batch.periods)
                yield batch
        self.fingerprints.update(dict.fromkeys(periods, fingerprint))

    # --- reading ---

    def _file_batches(self, file: Path, billing_period: str | None) -> Iterator[CostBatch]:
        name = file.name
        row = 1
        try:
            raw_batches = self._parquet(file) if name.lower().endswith(".parquet") else self._csv(file)
            for raw in raw_batches:
                n = raw.num_rows
                if n == 0:
                    continue
                self.rows_read += n
                table = normalise(raw, file=name, first_row=row, report=self.report)
                batch = _with_periods(name, row, table)
                row += n
                if billing_period:
                    wanted = pc.fill_null(
                        pc.equal(pc.strftime(table["BillingPeriodStart"], "%Y-%m"), billing_period), False
                    )
                    kept = pc.sum(wanted).as_py() or 0
                    self.rows_skipped += n - kept
                    if kept < n:
                        numbers = pc.add(pc.indices_nonzero(wanted), pa.scalar(batch.first_row, pa.uint64()))
                        periods = {billing_period: kept} if kept else {}
                        batch = CostBatch(name, batch.first_row, table.filter(wanted), periods, numbers)
                if not self.report.has_errors and batch.table.num_rows:
                    yield batch
        except _HeaderRefused:
            return
        except READ_ERRORS as exc:
            # A truncated gzip, broken CSV, a line or field over the limits, not UTF-8: everything read so far is
            # discarded with the rest.
            report_read_error(self.report, exc, file=name, row=row)

    def _header(self, name: str, names: list[str]) -> list[str]:
        """Check the column set; return the FOCUS columns to read (file names, before RENAMED is applied)."""
        report = self.report
        duplicates = sorted({n for n in names if names.count(n) > 1})
        for dup in duplicates:
            report.add(
                rule="unique_columns",
                column=dup,
                severity=ERROR,
                problem="appears more than once in the header",
                count=1,
                examples=[{"file": name, "row": None, "column": dup}],
            )
        mapped = {RENAMED.get(n, n) for n in names}
        unknown = [n for n in names if RENAMED.get(n, n) not in focus.BY_NAME]
        if unknown:
            report.unknown_columns[name] = unknown
            report.warnings.append(f"{name}: not FOCUS columns, ignored: {', '.join(unknown)}")
        missing_mandatory = sorted(MANDATORY_PRESENT - mapped)
        for col in missing_mandatory:
            report.add(
                rule="mandatory_columns_present",
                column=col,
                severity=ERROR,
                problem="is a mandatory FOCUS column and is missing from the file",
                count=1,
                examples=[{"file": name, "row": None, "column": col}],
            )
        report.missing_columns[name] = [c.name for c in focus.COLUMNS if c.name not in mapped]
        report.versions[name] = detect_version(mapped)
        if missing_mandatory or duplicates:
            raise _HeaderRefused
        return [n for n in names if n not in unknown]

    def _csv(self, file: Path) -> Iterator[pa.RecordBatch]:
        header = read_header(file)
        if not header:
            raise pa.ArrowInvalid("the file is empty (no header row)")
        wanted = self._header(file.name, header)
        # A Python file object, not pa.input_stream: Arrow's native stream read ahead far enough to hold
        # ~500 MB for a 750 MB file, a Python one keeps the reader at a few blocks (measured, pyarrow 21).
        # One parsing thread: the other core is PostgreSQL's, and Arrow's pool threads each kept their own
        # allocator heaps (peak memory 65 MB lower for a million rows, same speed).
        with open_export(file) as raw:
            reader = pcsv.open_csv(
                raw,
                read_options=pcsv.ReadOptions(block_size=csv_block_size(), use_threads=False),
                # Descriptions may hold quoted line breaks.
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    # Every column as text: decimals stay exact, and inference cannot misread a later block.
                    column_types={n: pa.string() for n in header},
                    include_columns=wanted,
                    null_values=["NULL", ""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
            yield from reader

    def _parquet(self, file: Path) -> Iterator[pa.RecordBatch]:
        parquet = pq.ParquetFile(file)
        wanted = self._header(file.name, parquet.schema_arrow.names)
        parquet_chunks_check(parquet, wanted)
        yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted)


# --- bounded reading, shared with the cloud export connectors (exports.py) ---


class ReadLimitError(Exception):
    """A file broke a reading bound: `rule` and `problem` for the rule report, `row` when it is known."""

    def __init__(self, rule: str, problem: str, row: int | None = None):
        super().__init__(problem)
        self.rule, self.problem, self.row = rule, problem, row


def csv_block_size() -> int:
    """The CSV reader's block: also the longest line it accepts (Arrow refuses a row straddling two blocks), so
    memory stays a few blocks whatever the line lengths or the compression ratio."""
    return min(CSV_BLOCK_SIZE, settings.FOCUS_MAX_LINE_BYTES)


def read_header(path: Path, *, gz: bool | None = None) -> list[str]:
    """The CSV header, reading at most one line limit of it: a file without line breaks, or a gzip that inflates
    to gigabytes without them, fails after one bounded read.

    The first data row is measured too: Arrow's reader, failing on an overlong row in its very first block,
    leaves a read-ahead thread behind that aborts the process at exit ("terminate called without an active
    exception"); found here, the error is ours. Later overlong rows fail inside the reader, which is safe.
    """
    limit = csv_block_size()
    with open_export(path, gz=gz) as raw:
        line = raw.readline(limit + 1)
        first_row = raw.readline(limit + 1) if len(line) <= limit else b""
    if len(line) > limit:
        raise ReadLimitError("line_length", f"the header line is longer than {limit} bytes (FOCUS_MAX_LINE_BYTES)", 1)
    if len(first_row) > limit:
        raise ReadLimitError("line_length", f"this row is longer than {limit} bytes (FOCUS_MAX_LINE_BYTES)", 1)
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReadLimitError(
            "utf8", f"is not UTF-8 text (byte {line[exc.start]:#04x} at offset {exc.start})", row=1
        ) from None
    try:
        return next(csv.reader([text]), [])
    except csv.Error as exc:  # e.g. a column name over the csv module's field limit
        raise ReadLimitError("csv_syntax", f"the header line is not valid CSV ({exc})", row=1) from None


def parquet_chunks_check(parquet: pq.ParquetFile, columns: list[str]) -> None:
    """Refuse, from the footer alone, a column chunk that would inflate beyond FOCUS_MAX_PARQUET_CHUNK_BYTES."""
    limit = settings.FOCUS_MAX_PARQUET_CHUNK_BYTES
    meta = parquet.metadata
    wanted = set(columns)
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            name = chunk.path_in_schema.split(".")[0]
            if name in wanted and chunk.total_uncompressed_size > limit:
                raise ReadLimitError(
                    "parquet_chunk_size",
                    f"column {name} of row group {group} is {chunk.total_uncompressed_size} bytes uncompressed, "
                    f"more than {limit} (FOCUS_MAX_PARQUET_CHUNK_BYTES)",
                )


# What reading a file may raise besides a rule: each becomes one ERROR naming the file and where.
READ_ERRORS = (ReadLimitError, OSError, EOFError, UnicodeDecodeError, csv.Error, pa.ArrowInvalid, *GZIP_ERRORS)


def report_read_error(report: RuleReport, exc: BaseException, *, file: str, row: int) -> None:
    """One rule error for a file that could not be read to its end, in words a user can act on."""
    detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, ReadLimitError):
        rule, problem, row = exc.rule, exc.problem, exc.row  # None: the file as a whole (e.g. its footer)
    elif "straddl" in detail:  # Arrow: one row is larger than a whole block
        rule = "line_length"
        problem = f"this row or one after it is longer than {csv_block_size()} bytes (FOCUS_MAX_LINE_BYTES)"
    elif "invalid UTF8" in detail or isinstance(exc, UnicodeDecodeError):
        rule, problem = "utf8", f"is not UTF-8 text ({detail})"
    elif isinstance(exc, csv.Error):
        rule, problem = "csv_syntax", f"is not valid CSV ({detail})"
    else:
        rule, problem = "file_readable", f"the file is truncated or unreadable after row {row - 1} ({detail})"
    report.add(
        rule=rule,
        column="",
        severity=ERROR,
        problem=problem,
        count=1,
        examples=[{"file": file, "row": row, "column": ""}],
    )


class _HeaderRefused(Exception):
    """The header already failed a rule; the rows of that file are not read."""


def _with_periods(name: str, first_row: int, table: pa.Table) -> CostBatch:
    periods: dict[str, int] = {}
    for item in pc.value_counts(table["BillingPeriodStart"]):  # a handful of distinct starts, formatted once each
        start = item["values"].as_py()
        if start is not None:
            key = f"{start:%Y-%m}"
            periods[key] = periods.get(key, 0) + item["counts"].as_py()
    return CostBatch(name, first_row, table, periods)


# --- normalisation and rule checks, shared by every connector that produces FOCUS-named columns ---


def normalise(raw: pa.RecordBatch | pa.Table, *, file: str, first_row: int, report: RuleReport) -> pa.Table:
    """Map a batch with FOCUS column names (any version, any arrow types) to the 57 FOCUS 1.2 columns."""
    n = raw.num_rows
    present = {RENAMED.get(name, name): raw.column(i) for i, name in enumerate(raw.schema.names)}
    out = {}
    for column in focus.COLUMNS:
        arr = present.get(column.name)
        if arr is None:
            out[column.name] = pa.nulls(n, arrow_type(column))
            continue
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        check = _Check(column.name, file, first_row, report)
        if column.type == focus.DATETIME:
            arr = check.datetime(arr)
        else:
            arr = check.text(arr, column)
            if column.type == focus.DECIMAL:
                arr = check.decimal(arr)
            elif column.type == focus.JSON:
                arr = check.json_object(arr)
        if column.allowed or column.name in CURRENCY_COLUMNS:
            arr = check.allowed(arr, column)
        if column.required:
            check.not_null(arr, severity=ERROR)
        elif column.name in focus.SPEC_NOT_NULL_TOLERATED:
            check.not_null(arr, severity=WARNING)
        out[column.name] = arr
    return pa.table(out)


class _Check:
    """Rule checks of one column of one batch; each finds its bad rows with a vectorised mask."""

    def __init__(self, column: str, file: str, first_row: int, report: RuleReport):
        self.column, self.file, self.first_row, self.report = column, file, first_row, report

    def flag(self, mask: pa.Array, arr: pa.Array, *, rule: str, severity: str, problem: str) -> int:
        mask = pc.fill_null(mask, False)
        count = pc.sum(mask).as_py() or 0
        if count:
            idx = pc.indices_nonzero(mask)[:5].to_pylist()
            examples = [
                {"file": self.file, "row": self.first_row + i, "column": self.column, "value": _jsonable(arr[i])}
                for i in idx
            ]
            self.report.add(
                rule=rule, column=self.column, severity=severity, problem=problem, count=count, examples=examples
            )
        return count

    def text(self, arr: pa.Array, column: focus.Column) -> pa.Array:
        if pa.types.is_floating(arr.type) and column.type == focus.DECIMAL:
            # A Parquet writer that stored money as double: the shortest round-trip text is the best we have.
            self.report.warnings.append(f"{self.file}: {self.column} is stored as floating point; read as decimal text")
        if pa.types.is_map(arr.type) or pa.types.is_struct(arr.type):
            arr = pa.array([None if v is None else json.dumps(_mapping(v)) for v in arr.to_pylist()], pa.string())
        elif not pa.types.is_string(arr.type):
            arr = arr.cast(pa.string())
        limit = settings.FOCUS_MAX_FIELD_BYTES
        if len(arr) and (pc.max(pc.binary_length(arr)).as_py() or 0) > limit:
            self.flag(
                pc.greater(pc.binary_length(arr), limit),
                arr,
                rule="field_size",
                severity=ERROR,
                problem=f"is longer than {limit} bytes (FOCUS_MAX_FIELD_BYTES)",
            )
        # PostgreSQL text cannot hold NUL; found here, the error names the row instead of failing the COPY.
        self.flag(
            pc.match_substring(arr, "\x00"),
            arr,
            rule="no_nul_character",
            severity=ERROR,
            problem="contains a NUL character (0x00), which PostgreSQL cannot store",
        )
        # FOCUS has no empty strings: an empty value is a null (real exports write "" for it).
        return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)

    def not_null(self, arr: pa.Array, *, severity: str) -> None:
        kept = "" if severity == ERROR else " (kept as null)"
        self.flag(
            pc.is_null(arr),
            arr,
            rule="not_null",
            severity=severity,
            problem=f"is empty, but FOCUS requires a value{kept}",
        )

    def decimal(self, arr: pa.Array) -> pa.Array:
        arr = pc.utf8_trim_whitespace(arr)
        try:
            # Fast path, the usual case: Arrow's decimal parser accepts a subset of DECIMAL_RE, and numeric(38, 15)
            # holds every value it parses into decimal128(38, 15) unrounded, so no rule below can fire.
            arr.cast(MONEY_TYPE)
            return arr
        except pa.ArrowInvalid:
            pass
        bad = pc.invert(pc.match_substring_regex(arr, DECIMAL_RE))
        self.flag(bad, arr, rule="decimal_type", severity=ERROR, problem="is not a decimal")
        self.flag(
            pc.match_substring_regex(arr, DECIMAL_TOO_BIG_RE),
            arr,
            rule="decimal_range",
            severity=ERROR,
            problem="has more than 23 digits before the decimal point",
        )
        self.flag(
            pc.and_(pc.match_substring_regex(arr, DECIMAL_ROUNDED_RE), pc.invert(bad)),
            arr,
            rule="decimal_precision",
            severity=WARNING,
            problem="has more than 15 decimal places; stored rounded to 15",
        )
        return arr

    def datetime(self, arr: pa.Array) -> pa.Array:
        if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
            # Naive Parquet timestamps are UTC, like naive text (FOCUS date-times are UTC).
            if pa.types.is_timestamp(arr.type) and arr.type.tz is None:
                return pc.assume_timezone(arr.cast(pa.timestamp("us")), "UTC")
            return arr.cast(TS)
        # Date-times repeat (a month has 720 hours): check and parse the distinct values, then spread them out.
        encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(self.text(arr, focus.BY_NAME[self.column])))
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        bad, parsed = self._datetime_values(encoded.dictionary)
        indices = encoded.indices
        if pc.any(bad).as_py():
            self.flag(
                pc.take(bad, indices),
                arr,
                rule="datetime_type",
                severity=ERROR,
                problem="is not a date-time (e.g. 2024-09-01T00:00:00Z)",
            )
        return pc.take(parsed, indices)

    @staticmethod
    def _datetime_values(text: pa.Array) -> tuple[pa.Array, pa.Array]:
        """(not a date-time, parsed or null) for each of `text`'s values."""
        bad = pc.fill_null(pc.invert(pc.match_substring_regex(text, DATETIME_RE)), False)
        text = pc.if_else(
            pc.match_substring_regex(text, DATE_ONLY_RE), pc.binary_join_element_wise(text, "T00:00:00", ""), text
        )
        text = pc.if_else(pc.match_substring_regex(text, HAS_ZONE_RE), text, pc.binary_join_element_wise(text, "Z", ""))
        text = pc.if_else(bad, pa.scalar(None, pa.string()), text)
        try:
            parsed = text.cast(TS)
        except pa.ArrowInvalid:
            # Well-formed but impossible (2024-02-30): find which, on this error path only.
            impossible = set()
            for value in pc.unique(text).to_pylist():
                if value is None:
                    continue
                try:
                    pa.array([value]).cast(TS)
                except pa.ArrowInvalid:
                    impossible.add(value)
            bad = pc.or_(bad, pc.fill_null(pc.is_in(text, pa.array(sorted(impossible), pa.string())), False))
            parsed = pc.if_else(bad, pa.scalar(None, pa.string()), text).cast(TS)
        return bad, parsed

    def json_object(self, arr: pa.Array) -> pa.Array:
        bad_values = []
        for value in pc.unique(arr).to_pylist():
            if value is None:
                continue
            try:
                # jsonb refuses what Python's json accepts beyond the JSON grammar (NaN, Infinity) and \u0000.
                parsed = json.loads(value, parse_constant=_not_json)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict) or "\\u0000" in value:
                bad_values.append(value)
        if bad_values:
            self.flag(
                pc.is_in(arr, pa.array(bad_values, pa.string())),
                arr,
                rule="json_object",
                severity=ERROR,
                problem="is not a JSON object",
            )
        return arr

    def allowed(self, arr: pa.Array, column: focus.Column) -> pa.Array:
        allowed = ISO_4217 if column.name in CURRENCY_COLUMNS else column.allowed
        outside = pc.and_(pc.is_valid(arr), pc.invert(pc.is_in(arr, pa.array(sorted(allowed), pa.string()))))
        if not pc.any(outside).as_py():
            return arr
        canonical = {value.casefold(): value for value in allowed}
        fixes, refused = {}, []
        for value in pc.unique(arr.filter(outside)).to_pylist():
            fixed = canonical.get(" ".join(value.split()).casefold())
            if fixed:
                fixes[value] = fixed
            else:
                refused.append(value)
        if fixes:
            # "Usage-based" for "Usage-Based" (the FOCUS sample's Oracle rows): the meaning is certain.
            self.flag(
                pc.is_in(arr, pa.array(list(fixes), pa.string())),
                arr,
                rule="allowed_values_spelling",
                severity=WARNING,
                problem="differs from a FOCUS value only in case or spacing; stored with the FOCUS spelling",
            )
            for value, fixed in fixes.items():
                arr = pc.if_else(pc.equal(arr, value), fixed, arr)
        if refused:
            if column.name in CURRENCY_COLUMNS:
                rule, problem = "currency_code", "is not an ISO 4217 currency code"
            else:
                rule, problem = "allowed_values", f"is not one of the FOCUS values ({', '.join(sorted(allowed))})"
            self.flag(pc.is_in(arr, pa.array(refused, pa.string())), arr, rule=rule, severity=ERROR, problem=problem)
        return arr


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


EXAMPLE_MAX_CHARS = 200  # a rule example shows this much of a value (a 64 KiB field is not copied into reports)


def _jsonable(scalar: pa.Scalar):
    value = scalar.as_py()
    if isinstance(value, str) and len(value) > EXAMPLE_MAX_CHARS:
        return value[:EXAMPLE_MAX_CHARS] + "…"
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _mapping(value) -> dict:
    # pyarrow gives map<string, string> as a list of (key, value) pairs.
    return dict(value) if isinstance(value, list) else value


def connection_check(account) -> ConnectionReport:
    """A focus account's "connection": its path exists, holds exports, and the first one has the FOCUS columns."""
    report = ConnectionReport(provider=account.provider, account=account.name)
    path = (account.settings or {}).get("path")
    if not path:
        report.failed("settings.path", "the account has no settings.path to read FOCUS exports from")
        return report
    try:
        # Confined to FOCUS_IMPORT_ROOT first: outside it, one refusal whatever is (or is not) there.
        files = source_files(path, confined=True)
    except PermanentError as exc:
        report.failed("export files", str(exc))
        return report
    report.passed("export files", f"{len(files)} file(s) in {path}")
    source = FocusFileSource(account, path=files[0])
    try:
        if files[0].name.lower().endswith(".parquet"):
            names = pq.ParquetFile(files[0]).schema_arrow.names
        else:
            names = read_header(files[0])
        source._header(files[0].name, names)
    except _HeaderRefused:
        report.failed(f"FOCUS columns of {files[0].name}", source.report.error_message())
        return report
    except READ_ERRORS as exc:
        report_read_error(source.report, exc, file=files[0].name, row=1)
        report.failed(f"reading {files[0].name}", source.report.error_message())
        return report
    report.passed(f"FOCUS columns of {files[0].name}", f"FOCUS {source.report.versions.get(files[0].name, '?')}")
    return report

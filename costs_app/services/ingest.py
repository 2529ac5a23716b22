"""Cost ingestion: a connector's FOCUS 1.2 batches into CostLineItem by COPY, each billing month swapped atomically.

One transaction per import, holding the account row locked (imports of one account are serialised):

1. The first batch tells which billing periods the import holds; a thread makes the staging tables for their
   months and counts the account's stored lines of those periods per day (`partitions.Stage`) while reading
   goes on, its output spooled to a temporary file.
2. The rows are streamed in with COPY into the staging tables (no index yet), fed from a writer thread through a
   short queue: PostgreSQL parses one batch while this thread reads, checks and maps the next (`_Load`,
   `CopyWriter`). Each staging leaf then gets its indexes, built once after the COPY.
3. The daily and tag rollups are summed from the batches on the way (`rollups.NewRollups`); each touched day
   gets those sums, or is summed in SQL when it also holds lines of other billing periods (`_roll_up`).
4. Last, each month's old leaf (the account's lines of that month) is detached and dropped and the staging
   leaf attached in its place: no row is deleted one by one, and readers see the old month or the new one.

A source that breaks a FOCUS rule it cannot map raises PermanentError with the report; a value PostgreSQL
refuses inside the COPY raises one naming the file, row and column. Either way the rollback leaves the
previous data exactly as it was. bench/ingest.py measures the whole path against a raw COPY.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import queue
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from django.db import connection, transaction
from django.utils import timezone
from psycopg.copy import LibpqWriter
from psycopg.generators import copy_to

from costs_app.models import CostAllocationTag, CostDailyRollup, CostLineItem, CostTagRollup
from costs_app.services.partitions import Stage, pause_point
from costs_app.services.rollups import DAILY_COLUMNS, TAG_COLUMNS, NewRollups
from finops.errors import PermanentError
from providers_app import focus_schema as focus
from providers_app.connectors import CostBatch, CostSource, RuleReport, get_cost_source
from providers_app.models import CloudAccount, ExportState

PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
LINES = CostLineItem._meta.db_table
ROLLUPS = CostDailyRollup._meta.db_table
TAG_ROLLUPS = CostTagRollup._meta.db_table
COPY_COLUMNS = ["account_id", "source_file", "source_row", *(c.field for c in focus.COLUMNS)]
FOCUS_NAMES = {c.field: c.name for c in focus.COLUMNS}
COPY_SQL = "COPY {table} (" + ", ".join(COPY_COLUMNS) + ") FROM STDIN WITH (FORMAT csv)"
CSV_OPTIONS = pcsv.WriteOptions(include_header=False, quoting_style="needed")
NAIVE_TS = pa.timestamp("us")
COPY_CHUNK = 128 * 1024  # psycopg's own largest single write


class FocusRulesError(PermanentError):
    """The source broke FOCUS rules it cannot be mapped past; `report` has every rule, count and example."""

    def __init__(self, report: RuleReport):
        self.report = report
        super().__init__(report.error_message())


@dataclass
class IngestResult:
    account_id: int
    rows_read: int = 0
    rows_loaded: int = 0
    # Rows outside a requested billing period: read and counted, deliberately not loaded.
    rows_skipped: int = 0
    rows_replaced: int = 0  # older rows of the same account and periods, replaced
    periods: dict[str, int] = field(default_factory=dict)
    billed_cost: dict[str, Decimal] = field(default_factory=dict)  # currency -> sum over the loaded periods
    rollup_days: int = 0
    # Periods whose export files had not changed since they were last loaded: left as they are.
    unchanged_periods: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    duration_ms: int = 0

    def as_dict(self) -> dict:
        return {
            "account_id": self.account_id,
            "rows_read": self.rows_read,
            "rows_loaded": self.rows_loaded,
            "rows_skipped": self.rows_skipped,
            "rows_replaced": self.rows_replaced,
            "periods": dict(sorted(self.periods.items())),
            "billed_cost": {currency: str(total) for currency, total in sorted(self.billed_cost.items())},
            "rollup_days": self.rollup_days,
            "unchanged_periods": list(self.unchanged_periods),
            "files": list(self.files),
            "report": self.report,
            "warnings": list(self.warnings),
            "duration_ms": self.duration_ms,
        }


def account_cost_sync(*, account_id: int, billing_period: str | None = None, force: bool = False) -> IngestResult:
    """The sync task's work: fetch the account's cost export through its connector and replace its periods.

    Periods whose export has not changed since their last load are skipped, unless `force`.
    """
    account = CloudAccount.objects.filter(id=account_id).first()
    if account is None:
        raise PermanentError(f"cloud account {account_id} does not exist")
    if billing_period is not None and not PERIOD_RE.match(billing_period):
        raise PermanentError(f"billing period {billing_period!r} is not of the form YYYY-MM")
    source = get_cost_source(account)
    if not force:
        source.known_fingerprints = loaded_fingerprints(account)
    return cost_period_replace(account=account, source=source, billing_period=billing_period)


def loaded_fingerprints(account: CloudAccount) -> dict[str, str]:
    """Billing period -> fingerprint of the export last loaded for it (what a source may skip as unchanged)."""
    return dict(ExportState.objects.filter(account=account).values_list("billing_period", "fingerprint"))


def focus_file_import(*, account: CloudAccount, path: str) -> IngestResult:
    """Load one FOCUS file or folder into a focus account (import_focus, seed_demo)."""
    from providers_app.connectors.focus import FocusFileSource

    return cost_period_replace(account=account, source=FocusFileSource(account, path=path))


@transaction.atomic
def cost_period_replace(
    *, account: CloudAccount, source: CostSource, billing_period: str | None = None
) -> IngestResult:
    started = time.monotonic()
    # Serialises imports of one account, whoever starts them (task, command, seed); see `boundary`.
    CloudAccount.objects.select_for_update().filter(pk=account.pk).first()
    result = IngestResult(account_id=account.pk)
    tag_keys = active_tag_keys()
    sums = NewRollups(with_tags=bool(tag_keys))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # the COPY's date-times are UTC without a zone
        lines = CopyLines()
        stage = Stage(account.pk)
        load = _Load(cursor.cursor, stage)
        try:
            with load:
                for batch in source.batches(billing_period=billing_period):
                    lines.add(batch)
                    load.write(batch, _copy_bytes(batch, account.pk))
                    sums.add(batch.table)
                    result.rows_loaded += batch.table.num_rows
                    for period, rows in batch.periods.items():
                        result.periods[period] = result.periods.get(period, 0) + rows
        except psycopg.errors.DataError as exc:
            # A value the FOCUS checks let through and PostgreSQL refused (e.g. year 0000): the atomic block
            # rolls the whole load back; the message says where the value came from.
            raise PermanentError(lines.describe(exc)) from None
        result.rows_read, result.rows_skipped = source.rows_read, source.rows_skipped
        result.files = source.files
        result.unchanged_periods = sorted(source.unchanged_periods)
        if source.report.has_errors:
            raise FocusRulesError(source.report)  # the atomic block rolls the COPY back
        if result.rows_read != result.rows_loaded + result.rows_skipped:  # a bug, never a data problem
            raise RuntimeError(
                f"rows read {result.rows_read} != loaded {result.rows_loaded} + skipped {result.rows_skipped}"
            )
        if stage.prepared:
            # Months the first batch did not show (a file of several months) get their leaves and counts now.
            stage.finish_copy(cursor, {_utc(p) for p in sums.periods})
            stage.build_indexes(cursor)
            stage.claim_months(cursor)  # from here imports of the same months wait for this one's commit
        result.rows_replaced = sum(stage.old_days.values())
        mixed = _roll_up(cursor, account.pk, stage.old_days, sums, tag_keys)
        result.billed_cost = sums.billed_by_currency()
        _export_states_record(account, source.fingerprints, result.periods)
        result.report = source.report.as_dict()
        result.warnings = list(source.report.warnings)
        CloudAccount.objects.filter(pk=account.pk).update(last_synced_at=timezone.now())
        if sums.periods:
            stage.swap(cursor)  # last: its locks are held only until the commit
            _roll_up_mixed(cursor, account.pk, mixed, tag_keys)  # these days read the lines just swapped in
        result.rollup_days = len(set(stage.old_days) | sums.days) if sums.periods else 0
    result.duration_ms = int((time.monotonic() - started) * 1000)
    return result


class CopyLines:
    """Which source file and row each line of the COPY stream came from, to name them in a server error."""

    CONTEXT_RE = re.compile(r"COPY \S+, line (\d+)(?:, column (\w+))?")

    def __init__(self):
        self.starts: list[int] = []  # first COPY line (1-based) of each batch
        self.batches: list[CostBatch] = []
        self.next_line = 1

    def add(self, batch: CostBatch) -> None:
        self.starts.append(self.next_line)
        # Only what locating a row needs; the batch's table is not kept.
        self.batches.append(CostBatch(batch.file, batch.first_row, pa.table({}), {}, batch.row_numbers))
        self.next_line += batch.table.num_rows

    def describe(self, exc: psycopg.Error) -> str:
        problem = (exc.diag.message_primary or str(exc)).strip()
        match = self.CONTEXT_RE.search(exc.diag.context or "")
        if not match or not self.starts:
            return f"PostgreSQL refused the data: {problem}"
        line = int(match.group(1))
        index = bisect.bisect_right(self.starts, line) - 1
        batch, offset = self.batches[index], line - self.starts[index]
        row = batch.first_row + offset if batch.row_numbers is None else int(batch.row_numbers[offset].as_py())
        where = f"{batch.file} row {row}"
        if match.group(2) in FOCUS_NAMES:
            where += f" column {FOCUS_NAMES[match.group(2)]}"
        return f"{where}: PostgreSQL refused the value ({problem})"


def _utc(value):
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Load:
    """The COPY of one import into its staging tables, made (and the lines replaced counted) beside the reading.

    The first batch tells which billing periods the import holds. Their staging tables are made and the old
    lines counted at once, in a thread, while this thread goes on reading and checking; what it produces
    meanwhile waits in a temporary file (not in memory). Then the COPY starts, the spooled data first. Only one
    thread uses the connection at a time: the COPY starts after the helper thread is joined.
    """

    SPOOL_READ = 4 << 20

    def __init__(self, raw_cursor, stage: Stage):
        self.raw, self.stage = raw_cursor, stage
        self.paused = False
        self.deleting: threading.Thread | None = None
        self.delete_error: BaseException | None = None
        self.spool = None
        self.stack = contextlib.ExitStack()
        self.writer: CopyWriter | None = None

    def __enter__(self) -> _Load:
        return self

    def write(self, batch: CostBatch, data) -> None:
        if self.writer is None and self.deleting is None:
            periods = {_utc(p) for p in pc.unique(batch.table["BillingPeriodStart"]).drop_null().to_pylist()}
            self.deleting = threading.Thread(target=self._prepare, args=(periods,), name="ingest-stage", daemon=True)
            self.deleting.start()
        if self.writer is None and self.deleting.is_alive():
            if self.spool is None:
                self.spool = self.stack.enter_context(tempfile.TemporaryFile(prefix="finops-ingest-"))  # noqa: SIM115
            self.spool.write(data)
            return
        if self.writer is None:
            self._start_copy()
        self.writer.write(data)
        self._in_copy()

    def _in_copy(self) -> None:
        if not self.paused:
            self.paused = True
            pause_point("copy")

    def _prepare(self, periods: set) -> None:
        try:
            # A cursor of its own on the same connection; the producing thread does not touch it meanwhile.
            with self.raw.connection.cursor() as cursor:
                self.stage.prepare(cursor, periods)
        except BaseException as exc:  # noqa: BLE001 - raised in the producing thread
            self.delete_error = exc

    def _start_copy(self) -> None:
        self._join_delete()
        copy_sql = COPY_SQL.format(table=self.stage.copy_target)
        copy = self.stack.enter_context(self.raw.copy(copy_sql, writer=FlushingWriter(self.raw)))
        self.writer = self.stack.enter_context(CopyWriter(copy))
        if self.spool is not None:
            self.spool.seek(0)
            while chunk := self.spool.read(self.SPOOL_READ):
                self.writer.write(chunk)
            self.spool.close()
            self.spool = None
            self._in_copy()

    def _join_delete(self) -> None:
        if self.deleting is not None:
            self.deleting.join()
        if self.delete_error is not None:
            raise self.delete_error

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None and self.writer is None and self.deleting is not None:
            try:
                self._start_copy()  # everything was read while the delete ran
            except BaseException:
                self._close(*sys.exc_info())
                raise
        self._close(exc_type, exc, tb)

    def _close(self, exc_type, exc, tb) -> None:
        try:
            if self.deleting is not None:
                self.deleting.join()  # never leave a thread on the connection
        finally:
            # Ends the COPY: the data is in on success; after an error psycopg sends CopyFail.
            self.stack.__exit__(exc_type, exc, tb)
        if exc is None and self.delete_error is not None:
            raise self.delete_error


class FlushingWriter(LibpqWriter):
    """Sends each chunk to the socket before taking the next. libpq, non-blocking, would otherwise buffer all
    that the server has not read yet, and the client would hold the whole backlog in memory."""

    def write(self, data) -> None:
        for i in range(0, len(data), COPY_CHUNK):
            self.connection.wait(copy_to(self._pgconn, data[i : i + COPY_CHUNK], flush=True))


class CopyWriter:
    """Feeds a COPY from a thread of its own through a short queue, so producing the next batch (Arrow, mostly
    outside the GIL) overlaps sending this one and the server's work on it. At most `depth` batches wait.

    Used as a context manager around the producing loop: on leaving, the queue is drained and the thread
    joined before the COPY ends, and an error raised while sending is raised in the producer.
    """

    def __init__(self, copy, depth: int = 2):
        self.copy = copy
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send, name="ingest-copy", daemon=True)

    def __enter__(self) -> CopyWriter:
        self.thread.start()
        return self

    def _send(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.copy.write(data)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer, which raises it
                    self.error = exc

    def write(self, data) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(data)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc is None:
            raise self.error


def _export_states_record(account: CloudAccount, fingerprints: dict[str, str], periods: dict[str, int]) -> None:
    """Inside the load's transaction: the fingerprints become "known" only if the load commits."""
    now = timezone.now()
    for period, fingerprint in fingerprints.items():
        ExportState.objects.update_or_create(
            account=account,
            billing_period=period,
            defaults={"fingerprint": fingerprint, "rows": periods.get(period, 0), "loaded_at": now},
        )


def _roll_up(cursor, account_id: int, old_days: Counter, sums: NewRollups, tag_keys: list[str]) -> list:
    """Rebuild the rollups of every day touched, old rows' days and new rows' alike; returns the mixed days.

    A day whose lines all belonged to the replaced periods (its rollups count exactly the old rows replaced on
    it) gets the sums `sums` took on the way in. A day that also holds lines of other billing periods, or whose
    rollups no longer match its lines (retention keeps rollups longer than lines), is "mixed": its rollups are
    deleted here and summed again in SQL by `_roll_up_mixed`, once the new lines are swapped in.
    """
    if not sums.periods:
        return []
    # Days of the old and the new rows alike: a day the new data no longer has must lose its rollup too.
    days = sorted(set(old_days) | sums.days)
    cursor.execute(
        f"SELECT day, sum(line_count) FROM {ROLLUPS} WHERE account_id = %s AND day = ANY(%s) GROUP BY day",  # noqa: S608
        [account_id, days],
    )
    counted = dict(cursor.fetchall())
    mixed = sorted(day for day in days if counted.get(day, 0) != old_days.get(day, 0))
    pure = set(days) - set(mixed)
    cursor.execute(f"DELETE FROM {ROLLUPS} WHERE account_id = %s AND day = ANY(%s)", [account_id, days])  # noqa: S608
    _copy_in(cursor, ROLLUPS, DAILY_COLUMNS, sums.daily_csv(account_id, pure))
    if tag_keys:
        cursor.execute(
            f"DELETE FROM {TAG_ROLLUPS} WHERE account_id = %s AND tag_key = ANY(%s) AND day = ANY(%s)",  # noqa: S608
            [account_id, tag_keys, days],
        )
        _copy_in(cursor, TAG_ROLLUPS, TAG_COLUMNS, sums.tag_csv(account_id, pure, _tag_values(cursor, sums, tag_keys)))
    return mixed


def _roll_up_mixed(cursor, account_id: int, mixed: list, tag_keys: list[str]) -> None:
    if mixed:
        _roll_up_days(cursor, account_id, mixed)
        _roll_up_tags(cursor, account_id, mixed, tag_keys, delete=False)


def _tag_values(cursor, sums: NewRollups, keys: list[str]) -> dict[str, dict[str, str | None]]:
    """key -> Tags text -> `Tags::jsonb ->> key`, from PostgreSQL itself, so numbers, booleans and nested
    values become exactly the text the SQL rollups give them. One query over the distinct Tags values."""
    texts = sums.distinct_tags()
    values: dict[str, dict[str, str | None]] = {key: {} for key in keys}
    if texts:
        cursor.execute(
            "SELECT k, t, t::jsonb ->> k FROM unnest(%s::text[]) AS t, unnest(%s::text[]) AS k", [texts, keys]
        )
        for key, text, value in cursor.fetchall():
            values[key][text] = value
    return values


def _copy_in(cursor, table: str, columns: tuple[str, ...], data: bytes) -> None:
    if data:
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(data)


def _roll_up_days(cursor, account_id: int, days: list) -> None:
    """The daily rollups of `days` summed from the stored lines (every billing period of those days)."""
    # A rollup row is a day of charges (by ChargePeriodStart, UTC) from every billing period of that day.
    cursor.execute(
        f"""
        INSERT INTO {ROLLUPS} (account_id, day, billing_period_start, service_name, service_category,
                               sub_account_id, region_id, billing_currency, billed_cost, effective_cost,
                               list_cost, line_count)
        SELECT account_id, (charge_period_start AT TIME ZONE 'UTC')::date, min(billing_period_start),
               coalesce(service_name, ''), coalesce(min(service_category), ''), coalesce(sub_account_id, ''),
               coalesce(region_id, ''), billing_currency, sum(billed_cost), sum(effective_cost), sum(list_cost),
               count(*)
        FROM {LINES}
        WHERE account_id = %s
          AND charge_period_start >= (%s::date)::timestamp AT TIME ZONE 'UTC'
          AND charge_period_start < ((%s::date) + 1)::timestamp AT TIME ZONE 'UTC'
          AND (charge_period_start AT TIME ZONE 'UTC')::date = ANY(%s)
        GROUP BY account_id, 2, coalesce(service_name, ''), coalesce(sub_account_id, ''), coalesce(region_id, ''),
                 billing_currency
        """,  # noqa: S608
        [account_id, min(days), max(days), days],
    )


def active_tag_keys() -> list[str]:
    return list(CostAllocationTag.objects.filter(is_active=True).values_list("key", flat=True))


def _roll_up_tags(cursor, account_id: int, days: list | None, keys: list[str], *, delete: bool = True) -> None:
    """Rebuild the tag rollups of `keys` for the account's `days` (all its days when None)."""
    if not keys:
        return
    day_filter = "" if days is None else "AND day = ANY(%(days)s)"
    if delete:
        cursor.execute(
            f"DELETE FROM {TAG_ROLLUPS} WHERE account_id = %(account)s AND tag_key = ANY(%(keys)s) {day_filter}",  # noqa: S608
            {"account": account_id, "keys": keys, "days": days},
        )
    line_filter = (
        ""
        if days is None
        else """AND charge_period_start >= (%(first)s::date)::timestamp AT TIME ZONE 'UTC'
          AND charge_period_start < ((%(last)s::date) + 1)::timestamp AT TIME ZONE 'UTC'
          AND (charge_period_start AT TIME ZONE 'UTC')::date = ANY(%(days)s)"""
    )
    # One pass over the lines per key set: each line counts once per key, under its value or "" (untagged).
    cursor.execute(
        f"""
        INSERT INTO {TAG_ROLLUPS} (account_id, day, tag_key, tag_value, service_name, sub_account_id, region_id,
                                   billing_currency, billed_cost, effective_cost, list_cost, line_count)
        SELECT account_id, (charge_period_start AT TIME ZONE 'UTC')::date, k.key,
               coalesce(tags ->> k.key, ''), coalesce(service_name, ''), coalesce(sub_account_id, ''),
               coalesce(region_id, ''), billing_currency, sum(billed_cost), sum(effective_cost), sum(list_cost),
               count(*)
        FROM {LINES} CROSS JOIN unnest(%(keys)s::text[]) AS k(key)
        WHERE account_id = %(account)s {line_filter}
        GROUP BY account_id, 2, k.key, 4, 5, 6, 7, billing_currency
        """,  # noqa: S608
        {
            "account": account_id,
            "keys": keys,
            "days": days,
            "first": min(days) if days else None,
            "last": max(days) if days else None,
        },
    )


@transaction.atomic
def tag_rollups_rebuild(*, keys: list[str], account_id: int | None = None) -> int:
    """Backfill (or refresh) the tag rollups of `keys` from the stored lines; returns the rollup rows written."""
    accounts = [account_id] if account_id else list(CloudAccount.objects.values_list("id", flat=True))
    written = 0
    with connection.cursor() as cursor:
        for account in accounts:
            _roll_up_tags(cursor, account, None, keys)
            written += max(cursor.rowcount, 0)
    return written


@transaction.atomic
def cost_allocation_tags_activate(*, keys) -> list[str]:
    """Make `keys` active cost allocation tags; those not active until now get their rollups backfilled.

    Returns the keys activated by this call. One INSERT ... ON CONFLICT decides which keys are new or
    re-activated, so two concurrent callers never backfill the same key twice.
    """
    wanted = sorted({key for key in keys if key})
    if not wanted:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {CostAllocationTag._meta.db_table} AS t (key, is_active, created_at)
            SELECT key, true, now() FROM unnest(%s::text[]) AS key
            ON CONFLICT (key) DO UPDATE SET is_active = true WHERE NOT t.is_active
            RETURNING t.key
            """,  # noqa: S608
            [wanted],
        )
        activated = sorted(row[0] for row in cursor.fetchall())
    if activated:
        tag_rollups_rebuild(keys=activated)
    return activated


def _copy_bytes(batch: CostBatch, account_id: int) -> memoryview:
    """One batch as COPY csv: pyarrow writes it in C; nulls come out as unquoted empty fields (NULL)."""
    table = batch.table
    n = table.num_rows
    rows = batch.row_numbers if batch.row_numbers is not None else np.arange(batch.first_row, batch.first_row + n)
    extra = pa.table(
        {
            "account_id": pa.array(np.full(n, account_id, dtype=np.int64)),
            "source_file": pa.array([batch.file] * n, pa.string()),
            "source_row": pa.array(rows, pa.int64()),
        }
    )
    # Date-times are written without a zone: Arrow formats zoned timestamps ~20x slower, and the load runs with
    # TIME ZONE 'UTC', so PostgreSQL reads them as the UTC instants they are.
    columns = [c.cast(NAIVE_TS) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    full = pa.Table.from_arrays(extra.columns + columns, names=extra.column_names + table.column_names)
    buffer = io.BytesIO()
    pcsv.write_csv(full, buffer, CSV_OPTIONS)
    return buffer.getbuffer()

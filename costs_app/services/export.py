"""FOCUS 1.2 export: an account's stored cost lines as a CSV or Parquet file, streamed from PostgreSQL.

PostgreSQL formats every value (trim_scale for decimals, ISO 8601 UTC for date-times, jsonb text for
JSON), so the file has no float artefacts and no Python loop over rows: CSV comes straight out of
COPY ... TO STDOUT, Parquet from a server-side cursor in batches.

The lines are read one billing month at a time, oldest first, each month's in the order they are stored (the
order its import wrote them): a month is one partition per account (docs/partitioning.md), so each statement
reads one leaf and nothing is sorted. An ORDER BY over the whole range made PostgreSQL sort every row of it,
formatted, on disk before the first one came out (400,000 lines: 60 % of the export's time). Without a period
the months are those the account has a partition of, plus any found in the DEFAULT partitions.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from django.db import connections, router, transaction
from psycopg import sql

from costs_app.models import CostLineItem
from costs_app.services import partitions
from finops.db_router import replica_reads
from finops.errors import PermanentError
from providers_app import focus_schema as focus
from providers_app.models import CloudAccount

PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
FORMATS = ("csv", "parquet")
PARQUET_BATCH_ROWS = 50_000
WRITE_BYTES = 1 << 20
DECIMAL_TYPE = pa.decimal128(38, 15)
TIMESTAMP_TYPE = pa.timestamp("s", tz="UTC")


def _value_sql(column: focus.Column) -> sql.Composable:
    field = sql.Identifier(column.field)
    if column.type == focus.DECIMAL:
        # 0.000000800000000 -> 0.0000008: the value as the source wrote it, without numeric's padding.
        expr = sql.SQL("trim_scale({})::text").format(field)
    elif column.type == focus.DATETIME:
        expr = sql.SQL("""to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')""").format(field)
    elif column.type == focus.JSON:
        expr = sql.SQL("{}::text").format(field)
    else:
        expr = field
    return sql.SQL("{} AS {}").format(expr, sql.Identifier(column.name))


def _period_bounds(start: str | None, end: str | None) -> tuple[date | None, date | None]:
    def first_day(text: str, label: str) -> date:
        match = PERIOD_RE.match(text)
        if not match:
            raise PermanentError(f"{label} {text!r} is not a billing period of the form YYYY-MM")
        return date(int(match[1]), int(match[2]), 1)

    low = first_day(start, "start") if start else None
    high = None
    if end:
        last = first_day(end, "end")
        high = date(last.year + last.month // 12, last.month % 12 + 1, 1)  # first day after the end period
    if low and high and low >= high:
        raise PermanentError(f"start {start} is after end {end}")
    return low, high


def _month_query(account_id: int, month: datetime) -> sql.Composed:
    """One billing month of the account's lines (one leaf, by partition pruning), in stored order."""
    return sql.SQL(
        "SELECT {} FROM {} WHERE account_id = {} AND billing_period_start >= {} AND billing_period_start < {}"
    ).format(
        sql.SQL(", ").join(_value_sql(c) for c in focus.COLUMNS),
        sql.Identifier(CostLineItem._meta.db_table),
        sql.Literal(int(account_id)),
        sql.Literal(month),
        sql.Literal(partitions.next_month(month)),
    )


def export_months(cursor, *, account: CloudAccount, start: str | None, end: str | None) -> list[datetime]:
    """The billing months to read, oldest first: the account's partitions in start..end, and months of its lines
    that sit in a DEFAULT partition (none once its imports made the leaves). Catalogue lookups and the DEFAULT
    partitions only: no scan of the account's history."""
    low, high = _period_bounds(start, end)
    lines = CostLineItem._meta.db_table
    cursor.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ %s",
        [rf"^{lines}_p[0-9]{{6}}_a{int(account.pk)}$"],
    )
    months = {datetime.strptime(name[len(lines) + 2 : len(lines) + 8], "%Y%m").replace(tzinfo=UTC)
              for (name,) in cursor.fetchall()}  # fmt: skip
    cursor.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ %s", [rf"^{lines}(_p[0-9]{{6}})?_default$"]
    )
    defaults = [name for (name,) in cursor.fetchall()]
    if defaults:
        union = sql.SQL(" UNION ").join(
            sql.SQL(
                "SELECT DISTINCT date_trunc('month', billing_period_start AT TIME ZONE 'UTC') FROM {} "
                "WHERE account_id = {}"
            ).format(sql.Identifier(name), sql.Literal(int(account.pk)))
            for name in defaults
        )
        cursor.execute(union)
        months |= {value.replace(tzinfo=UTC) for (value,) in cursor.fetchall()}
    low_dt = datetime(low.year, low.month, 1, tzinfo=UTC) if low else None
    high_dt = datetime(high.year, high.month, 1, tzinfo=UTC) if high else None
    return sorted(m for m in months if (low_dt is None or m >= low_dt) and (high_dt is None or m < high_dt))


def focus_export(
    *, account: CloudAccount, start: str | None, end: str | None, out: str | Path | BinaryIO, fmt: str = "csv"
) -> int:
    """Write the account's cost lines of billing periods start..end (YYYY-MM, inclusive) as FOCUS 1.2; rows written."""
    if fmt not in FORMATS:
        raise PermanentError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    _period_bounds(start, end)  # a bad period is refused before a file is opened
    if isinstance(out, str | Path):
        with open(out, "wb") as fh:
            return focus_export(account=account, start=start, end=end, out=fh, fmt=fmt)
    # An export only reports: it may read the replica wherever it is called from (finops/db_router.py).
    with replica_reads():
        alias = router.db_for_read(CostLineItem)
    with connections[alias].cursor() as cursor:
        months = export_months(cursor, account=account, start=start, end=end)
    queries = [_month_query(account.pk, month) for month in months]
    if fmt == "csv":
        return _write_csv(queries, out, alias)
    return _write_parquet(queries, out, alias)


def _write_csv(queries: list[sql.Composed], out: BinaryIO, alias: str) -> int:
    out.write(",".join(c.name for c in focus.COLUMNS).encode() + b"\n")  # the header COPY would write
    written = 0
    with connections[alias].cursor() as cursor:
        for query in queries:
            with cursor.copy(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query)) as copy:
                # COPY hands over one row per message: write about 1 MiB at a time, not 80,000 small writes.
                pending, size = [], 0
                for chunk in copy:
                    pending.append(chunk)
                    size += len(chunk)
                    if size >= WRITE_BYTES:
                        out.write(b"".join(pending))
                        pending, size = [], 0
                out.write(b"".join(pending))
            written += cursor.rowcount
    return written


def parquet_schema() -> pa.Schema:
    types = {focus.DECIMAL: DECIMAL_TYPE, focus.DATETIME: TIMESTAMP_TYPE}
    return pa.schema([pa.field(c.name, types.get(c.type, pa.string())) for c in focus.COLUMNS])


def _write_parquet(queries: list[sql.Composed], out: BinaryIO, alias: str) -> int:
    schema = parquet_schema()
    written = 0
    connection = connections[alias]
    connection.ensure_connection()
    # A server-side (named) cursor lives in a transaction; it keeps only one batch in memory.
    with transaction.atomic(using=alias), pq.ParquetWriter(out, schema) as writer:
        for query in queries:
            with connection.connection.cursor(name="focus_export") as cursor:
                cursor.itersize = PARQUET_BATCH_ROWS
                cursor.execute(query)
                while rows := cursor.fetchmany(PARQUET_BATCH_ROWS):
                    columns = list(zip(*rows, strict=True))
                    arrays = [
                        pa.array(values, pa.string()).cast(field.type)
                        for values, field in zip(columns, schema, strict=True)
                    ]
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                    written += len(rows)
    return written

"""FOCUS 1.2 export: an account's stored cost lines as a CSV or Parquet file, streamed from PostgreSQL.

PostgreSQL formats every value (trim_scale for decimals, ISO 8601 UTC for date-times, jsonb text for
JSON), so the file has no float artefacts and no Python loop over rows: CSV comes straight out of
COPY ... TO STDOUT, Parquet from a server-side cursor in batches.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from django.db import connections, router, transaction
from psycopg import sql

from costs_app.models import CostLineItem
from finops.db_router import replica_reads
from finops.errors import PermanentError
from providers_app import focus_schema as focus
from providers_app.models import CloudAccount

PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
FORMATS = ("csv", "parquet")
PARQUET_BATCH_ROWS = 50_000
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


def export_query(*, account: CloudAccount, start: str | None, end: str | None) -> sql.Composed:
    low, high = _period_bounds(start, end)
    where = [sql.SQL("account_id = {}").format(sql.Literal(account.pk))]
    if low:
        where.append(sql.SQL("billing_period_start >= {}::timestamptz").format(sql.Literal(f"{low}T00:00:00Z")))
    if high:
        where.append(sql.SQL("billing_period_start < {}::timestamptz").format(sql.Literal(f"{high}T00:00:00Z")))
    return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY billing_period_start, charge_period_start, id").format(
        sql.SQL(", ").join(_value_sql(c) for c in focus.COLUMNS),
        sql.Identifier(CostLineItem._meta.db_table),
        sql.SQL(" AND ").join(where),
    )


def focus_export(
    *, account: CloudAccount, start: str | None, end: str | None, out: str | Path | BinaryIO, fmt: str = "csv"
) -> int:
    """Write the account's cost lines of billing periods start..end (YYYY-MM, inclusive) as FOCUS 1.2; rows written."""
    if fmt not in FORMATS:
        raise PermanentError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    query = export_query(account=account, start=start, end=end)
    if isinstance(out, str | Path):
        with open(out, "wb") as fh:
            return focus_export(account=account, start=start, end=end, out=fh, fmt=fmt)
    # An export only reports: it may read the replica wherever it is called from (finops/db_router.py).
    with replica_reads():
        alias = router.db_for_read(CostLineItem)
    if fmt == "csv":
        return _write_csv(query, out, alias)
    return _write_parquet(query, out, alias)


def _write_csv(query: sql.Composed, out: BinaryIO, alias: str) -> int:
    copy_sql = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(query)
    with connections[alias].cursor() as cursor:
        with cursor.copy(copy_sql) as copy:
            for chunk in copy:
                out.write(chunk)
        return cursor.rowcount


def parquet_schema() -> pa.Schema:
    types = {focus.DECIMAL: DECIMAL_TYPE, focus.DATETIME: TIMESTAMP_TYPE}
    return pa.schema([pa.field(c.name, types.get(c.type, pa.string())) for c in focus.COLUMNS])


def _write_parquet(query: sql.Composed, out: BinaryIO, alias: str) -> int:
    schema = parquet_schema()
    written = 0
    connection = connections[alias]
    connection.ensure_connection()
    # A server-side (named) cursor lives in a transaction; it keeps only one batch in memory.
    with (
        transaction.atomic(using=alias),
        pq.ParquetWriter(out, schema) as writer,
        connection.connection.cursor(name="focus_export") as cursor,
    ):
        cursor.itersize = PARQUET_BATCH_ROWS
        cursor.execute(query)
        while rows := cursor.fetchmany(PARQUET_BATCH_ROWS):
            columns = list(zip(*rows, strict=True))
            arrays = [
                pa.array(values, pa.string()).cast(field.type) for values, field in zip(columns, schema, strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            written += len(rows)
    return written

"""The partitions of the cost lines: an import's staging tables and their swap, and whole months dropped by retention.

Layout (migration 0014, docs/partitioning.md): RANGE by the UTC month of billing_period_start, then LIST by
account; a leaf holds one account's lines of one billing month and is the unit an import replaces.

An import (`ingest.cost_period_replace`) loads through a `Stage`, all in its one transaction:

1. `prepare`: a staging table partitioned by month (a DEFAULT partition catches months the first batch did not
   show), one standalone leaf per month with a CHECK equal to the leaf's partition bound, so that ATTACH skips
   its validation scan. No index: the COPY writes bare heaps.
2. the COPY, routed to the staging leaves; `finish_copy` moves rows of other months out of the DEFAULT into
   leaves of their own.
3. `build_indexes`: each leaf's primary key and index, built once over the loaded rows (a sort, not a
   million index insertions). Up to here nothing reads the stored lines: imports of other accounts of the
   same months run in parallel.
4. `claim_months`: the months' advisory locks (imports of one month serialise from here to their commit),
   the account's leaves made if missing, the replaced lines counted per day, and the few lines of the
   account's month whose billing period the import does not hold carried over (the swap replaces the month).
5. `swap`, the import's last statements: per month, detach the old leaf, drop it, attach the new one. The
   locks (ACCESS EXCLUSIVE on the month's table) are held only from there to the commit.

Readers see the old month or the new one, never both: the swap is in the import's transaction. Any failure,
a fenced run (every statement of `swap` goes through Django's cursor, which checks the claim) or a killed
worker rolls the transaction back: the staging tables never existed and the old leaf is where it was.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import OperationalError, transaction

from costs_app.models import CostLineItem
from finops.errors import TransientError

LINES = CostLineItem._meta.db_table
DEFAULT = f"{LINES}_default"
PAUSE_AT = "FINOPS_INGEST_PAUSE_AT"  # tests only: see pause_point
DETACHED_RE = re.compile(rf"^{LINES}_x[0-9a-f]{{12}}$")  # tables retention detached, to drop (`detached_drop`)
# The columns an import's ANALYZE of a new leaf takes statistics of (see `Stage.build_indexes`).
ANALYZE_COLUMNS = (
    "id",
    "account_id",
    "billing_period_start",
    "charge_period_start",
    "service_name",
    "service_category",
    "sub_account_id",
    "region_id",
    "billing_currency",
    "charge_category",
    "charge_frequency",
    "resource_id",
)
# Retention counts the lines of a leaf it drops only below this many pages (8 MB); above, it takes the statistics.
COUNT_PAGES_MAX = 1000


def month_of(value: datetime) -> datetime:
    value = value.astimezone(UTC)
    return datetime(value.year, value.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)


def period_table(month: datetime) -> str:
    return f"{LINES}_p{month:%Y%m}"


def leaf_table(month: datetime, account_id: int) -> str:
    return f"{period_table(month)}_a{int(account_id)}"


def pause_point(name: str) -> None:
    """A place the kill drills stop an import at: with FINOPS_INGEST_PAUSE_AT=<name>, write this process's id to
    the file FINOPS_INGEST_PAUSE_FILE and wait there FINOPS_INGEST_PAUSE_SECONDS (60) for the drill's SIGKILL or
    SIGSTOP. Unset, nothing happens."""
    if os.environ.get(PAUSE_AT) != name:
        return
    Path(os.environ["FINOPS_INGEST_PAUSE_FILE"]).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("FINOPS_INGEST_PAUSE_SECONDS", "60")))


class Stage:
    """One import's staging tables for one account (see the module docstring)."""

    def __init__(self, account_id: int):
        self.account_id = int(account_id)
        self.name = f"{LINES}_s{self.account_id}_{secrets.token_hex(4)}"
        self.leaves: dict[datetime, str] = {}  # month -> staging leaf
        self.periods: set[datetime] = set()  # billing_period_start values loaded
        # month -> the account's stored lines of that month: (day (UTC), billing_period_start) -> count
        self.stored: dict[datetime, Counter] = {}
        self.prepared = False
        self.swap_waits = 0  # swap attempts that timed out waiting for readers (see `swap`)

    # -- before the COPY (in the ingest's helper thread, on its own cursor of the import's connection) --

    def prepare(self, raw_cursor, periods: set[datetime]) -> None:
        self.prepared = True
        raw_cursor.execute(
            f"CREATE TABLE {self.name} (LIKE {LINES} INCLUDING DEFAULTS) PARTITION BY RANGE (billing_period_start)"
        )
        raw_cursor.execute(f"CREATE TABLE {self.name}_default PARTITION OF {self.name} DEFAULT")
        for month in sorted({month_of(p) for p in periods}):
            self._leaf(raw_cursor, month)
            raw_cursor.execute(
                f"ALTER TABLE {self.name} ATTACH PARTITION {self.leaves[month]} FOR VALUES FROM (%s) TO (%s)",
                [month, next_month(month)],
            )
        self.periods |= set(periods)

    @property
    def copy_target(self) -> str:
        return self.name

    def _leaf(self, cursor, month: datetime) -> str:
        leaf = self.leaves[month] = f"{self.name}_{month:%Y%m}"
        # The CHECK is the leaf's partition bound: ATTACH trusts it instead of scanning the rows.
        cursor.execute(
            f"""CREATE TABLE {leaf} (LIKE {LINES} INCLUDING DEFAULTS,
                CONSTRAINT {leaf}_bound CHECK (account_id = {self.account_id}
                    AND billing_period_start >= %s AND billing_period_start < %s))""",
            [month, next_month(month)],
        )
        return leaf

    def _count_stored(self, cursor, months: set[datetime]) -> None:
        """Count the account's stored lines of `months` per day and billing period (one pass over each leaf)."""
        for month in sorted(months - set(self.stored)):
            cursor.execute(
                f"""SELECT (charge_period_start AT TIME ZONE 'UTC')::date, billing_period_start, count(*) FROM {LINES}
                    WHERE account_id = %s AND billing_period_start >= %s AND billing_period_start < %s
                    GROUP BY 1, 2""",  # noqa: S608
                [self.account_id, month, next_month(month)],
            )
            self.stored[month] = Counter({(day, period): n for day, period, n in cursor.fetchall()})

    @property
    def old_days(self) -> Counter:
        """The lines the swap replaces (the account's stored lines of the billing periods loaded), per day."""
        days: Counter = Counter()
        for counts in self.stored.values():
            for (day, period), n in counts.items():
                if period in self.periods:
                    days[day] += n
        return days

    # -- after the COPY --

    def finish_copy(self, cursor, periods: set[datetime]) -> None:
        """Give every month loaded a leaf of its own. Touches only the staging tables: imports of other accounts
        go on in parallel up to `claim_months`."""
        cursor.execute(f"SELECT DISTINCT billing_period_start FROM {self.name}_default")  # noqa: S608
        late = {row[0] for row in cursor.fetchall()}
        for month in sorted({month_of(p) for p in late}):
            self._leaf(cursor, month)
            cursor.execute(
                f"INSERT INTO {self.leaves[month]} SELECT * FROM {self.name}_default "  # noqa: S608
                "WHERE billing_period_start >= %s AND billing_period_start < %s",
                [month, next_month(month)],
            )
        self.periods |= set(periods)
        for leaf in self.leaves.values():
            if self._attached(cursor, leaf):
                cursor.execute(f"ALTER TABLE {self.name} DETACH PARTITION {leaf}")
        cursor.execute(f"DROP TABLE {self.name}")

    def claim_months(self, cursor) -> None:
        """Take the months this import replaces, then read what they hold: count the replaced lines per day and
        carry over the account's lines of billing periods the import does not hold (the swap replaces the whole
        month).

        Imports of different accounts in one month both read the month's table and both swap in it (DETACH
        takes ACCESS EXCLUSIVE on it): two such transactions would each wait for the other's read lock. So from
        here to its commit an import holds the month's advisory lock (the one `finops_costline_leaf` takes, in
        month order), and it has read nothing of the stored lines before: the second import of a month waits
        here, with its COPY and indexes already done, and never holds a lock the first one needs. The leaves
        are made first, so the counts below read the account's leaf, not a DEFAULT partition.
        """
        for month in sorted(self.leaves):
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext('finops_costline_leaf'), hashtext(%s))", [period_table(month)]
            )
            cursor.execute("SELECT finops_costline_leaf(%s, %s)", [month, self.account_id])
        self._count_stored(cursor, set(self.leaves))
        for month, leaf in self.leaves.items():
            # Rare (two billing periods starting in one month): the swap replaces the whole month of the
            # account, so lines of a billing period this import does not hold move to the new leaf.
            if all(period in self.periods for _day, period in self.stored[month]):
                continue
            cursor.execute(
                f"""INSERT INTO {leaf} SELECT * FROM {LINES} WHERE account_id = %s AND billing_period_start >= %s
                    AND billing_period_start < %s AND billing_period_start <> ALL(%s)""",  # noqa: S608
                [self.account_id, month, next_month(month), sorted(self.periods)],
            )

    def _attached(self, cursor, leaf: str) -> bool:
        cursor.execute("SELECT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = %s::regclass)", [leaf])
        return cursor.fetchone()[0]

    def build_indexes(self, cursor) -> None:
        """The parent's primary key and index on each leaf, built after the COPY; ATTACH adopts them."""
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for leaf in self.leaves.values():
            cursor.execute(f"ALTER TABLE {leaf} ADD PRIMARY KEY (id, billing_period_start, account_id)")
            pause_point("index")
            cursor.execute(f"CREATE INDEX ON {leaf} (account_id, charge_period_start)")
            # Statistics before the leaf is attached: the planner and the lists' estimated counts are right
            # from the commit on, not once autovacuum comes by (a 1 M-line month read as empty made 10 s pages).
            # Of the columns queries filter, group and sort on only: all 57 took 1.5-2 s per 80,000 lines here
            # (a third of the import), these 0.3-0.4 s; autovacuum's analyze fills in the rest later.
            cursor.execute(f"ANALYZE {leaf} ({', '.join(ANALYZE_COLUMNS)})")

    def swap(self, cursor) -> None:
        """Per month: the old leaf out and dropped, the new one in. `cursor` is Django's: a fenced run stops here.

        DETACH needs the month's table ACCESS EXCLUSIVE: queued behind a long reader (a dashboard over a year, an
        export), it would hold up every query of that month behind it for as long as the reader runs. So each
        attempt waits at most INGEST_SWAP_LOCK_TIMEOUT for its locks, inside a savepoint: on a timeout the
        attempt is rolled back (its locks released, readers go on, the staged leaves stay), and the swap is
        tried again after a pause, INGEST_SWAP_ATTEMPTS times in all; then the import fails with a
        TransientError (its task retries) and the old month stays whole.
        """
        cursor.execute("SELECT current_setting('lock_timeout')")
        previous = cursor.fetchone()[0]
        attempts = max(1, int(settings.INGEST_SWAP_ATTEMPTS))
        timeout_ms = max(1, int(settings.INGEST_SWAP_LOCK_TIMEOUT * 1000))
        for attempt in range(1, attempts + 1):
            try:
                with transaction.atomic():  # a savepoint: a timed-out attempt leaves nothing and holds nothing
                    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
                    self._swap_months(cursor)
                break
            except OperationalError as exc:
                if not isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
                    raise
                self.swap_waits += 1
                if attempt == attempts:
                    raise TransientError(
                        f"the swap of account {self.account_id}'s months waited {attempts} x "
                        f"{settings.INGEST_SWAP_LOCK_TIMEOUT}s for readers of those months; the import is retried, "
                        "the stored months are unchanged"
                    ) from exc
                time.sleep(min(0.5 * attempt, 5.0))
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])

    def _swap_months(self, cursor) -> None:
        for month, leaf in sorted(self.leaves.items()):
            cursor.execute("SELECT finops_costline_leaf(%s, %s)", [month, self.account_id])
            old, parent = leaf_table(month, self.account_id), period_table(month)
            cursor.execute(f"ALTER TABLE {parent} DETACH PARTITION {old}")
            pause_point("swap")
            cursor.execute(f"DROP TABLE {old}")
            cursor.execute(f"ALTER TABLE {leaf} RENAME TO {old}")
            cursor.execute(f"ALTER TABLE {parent} ATTACH PARTITION {old} FOR VALUES IN ({self.account_id})")


def leaves_before(cursor, cutoff: datetime) -> list[tuple[str, str, datetime]]:
    """(period table, leaf, month) of every account leaf whose month ends on or before `cutoff`."""
    cursor.execute(
        f"""SELECT p.relname, c.relname FROM pg_inherits top JOIN pg_class p ON p.oid = top.inhrelid
            JOIN pg_inherits i ON i.inhparent = p.oid JOIN pg_class c ON c.oid = i.inhrelid
            WHERE top.inhparent = %s::regclass AND p.relname ~ '^{LINES}_p[0-9]{{6}}$'
              AND c.relname ~ '_a[0-9]+$' ORDER BY 1, 2""",
        [LINES],
    )
    found = []
    for parent, leaf in cursor.fetchall():
        month = datetime.strptime(parent[-6:], "%Y%m").replace(tzinfo=UTC)
        if next_month(month) <= cutoff:
            found.append((parent, leaf, month))
    return found


@dataclass
class Detached:
    """What `month_detach_if_older` took out of the cost lines: tables for `detached_drop`, and their lines."""

    tables: list[str] = field(default_factory=list)  # renamed `{LINES}_x<token>`: a whole month, or leaves
    leaves: int = 0  # the account leaves among them
    rows: int = 0
    rows_estimated: int = 0  # of `rows`: taken from the leaves' statistics, not counted


def month_detach_if_older(cursor, *, parent: str, leaves: list[str], cutoff: datetime) -> Detached | None:
    """Detach, in the caller's one transaction, what of the month `parent` is wholly older than `cutoff` (by
    charge_period_start): the whole month's table when every leaf of it is old and its DEFAULT is empty (the
    usual case: one DETACH from the cost lines), else each old leaf of `leaves` from the month. Every table
    detached is renamed to a `{LINES}_x<token>` name for `detached_drop`; None when nothing is old (a leaf with
    a line at or after `cutoff` stays: the batched DELETE then takes what is old).

    One transaction for the month, not one per leaf: each transaction's commit is a WAL flush, and each DETACH
    of a leaf locks the month's table and rewrites its catalog entries and those of its indexes; a month of six
    accounts went in 13 transactions (six leaves, the month's table, six drops). The DROP is left to a
    transaction of its own (`detached_drop`, after this one commits): a DROP's commit frees the tables' files,
    and the table detached from, locked ACCESS EXCLUSIVE, would stay locked for readers meanwhile. Renamed, a
    detached table can never be taken for a month's table or an account's leaf by an import of that month
    (`finops_costline_leaf` looks them up by name), and a run that died before dropping it leaves a name
    `detached_sweep` finds.

    A large leaf is not counted: a count(*) reads the whole leaf (a month of a large account is gigabytes, cold
    by the time it is old; seconds to minutes) only to throw it away. Its number is its row count in
    pg_class.reltuples as its import's ANALYZE left it (`build_indexes`), or a later VACUUM/ANALYZE: an
    estimate (ANALYZE extrapolates from a sample; lines deleted since, e.g. by an earlier run's batched path,
    may still be in it). A leaf of fewer than COUNT_PAGES_MAX pages (8 MB), or one never analysed, is counted.
    """
    old = [leaf for leaf in leaves if _leaf_older(cursor, leaf, cutoff)]
    if not old:
        return None
    detached = Detached(leaves=len(old))
    for leaf in old:
        rows, estimated = _leaf_rows(cursor, leaf)
        detached.rows += rows
        detached.rows_estimated += rows if estimated else 0
    cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [parent],
    )
    children = {row[0] for row in cursor.fetchall()}
    default = f"{parent}_default"
    whole = children - {default} == set(old)
    if whole and default in children:
        cursor.execute(f"SELECT EXISTS (SELECT FROM {default})")  # noqa: S608
        whole = not cursor.fetchone()[0]
    if whole:
        # Readers of the cost lines lose the month at this commit; its leaves and DEFAULT go with it (renamed
        # too, so that an import of that month makes fresh ones).
        cursor.execute(f"ALTER TABLE {LINES} DETACH PARTITION {parent}")
        detached.tables.append(_rename_detached(cursor, parent))
        for child in sorted(children):
            _rename_detached(cursor, child)
        return detached
    for leaf in old:
        cursor.execute(f"ALTER TABLE {parent} DETACH PARTITION {leaf}")
        detached.tables.append(_rename_detached(cursor, leaf))
    return detached


def _leaf_older(cursor, leaf: str, cutoff: datetime) -> bool:
    account_id = int(leaf.rsplit("_a", 1)[1])
    # One backwards step of the (account, charge_period_start) index: a leaf holds one account.
    cursor.execute(f"SELECT max(charge_period_start) FROM {leaf} WHERE account_id = %s", [account_id])  # noqa: S608
    newest = cursor.fetchone()[0]
    return newest is None or newest < cutoff


def _leaf_rows(cursor, leaf: str) -> tuple[int, bool]:
    """The lines of a leaf about to be dropped, and whether that is an estimate (see `month_detach_if_older`)."""
    cursor.execute("SELECT reltuples, relpages FROM pg_class WHERE oid = %s::regclass", [leaf])
    reltuples, relpages = cursor.fetchone()
    if reltuples >= 0 and relpages >= COUNT_PAGES_MAX:
        return int(round(reltuples)), True
    cursor.execute(f"SELECT count(*) FROM {leaf}")  # noqa: S608
    return cursor.fetchone()[0], False


def _rename_detached(cursor, table: str) -> str:
    gone = f"{LINES}_x{secrets.token_hex(6)}"
    cursor.execute(f"ALTER TABLE {table} RENAME TO {gone}")
    return gone


def detached_drop(cursor, tables: list[str]) -> None:
    """Drop tables `month_detach_if_older` detached (nobody reads them: they are no partitions any more), in one
    statement: one commit frees them all. A month's table takes its leaves with it."""
    for table in tables:
        if not DETACHED_RE.match(table):
            raise ValueError(f"{table} is not a detached cost line table")
    if tables:
        cursor.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}")


def detached_sweep(cursor) -> list[str]:
    """Names of detached tables a run left undropped (it died between the detach and the drop); a month's leaves
    are not listed, they go with it."""
    cursor.execute(
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND NOT relispartition AND relname ~ %s",
        [DETACHED_RE.pattern],
    )
    return [row[0] for row in cursor.fetchall()]

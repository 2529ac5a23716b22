"""Cost lines by month only, or by month and account? The experiment behind migration 0014's layout.

    python bench/partition_layout.py                 # 300,000 lines per account-month
    python bench/partition_layout.py --rows 100000

In a scratch database (`finops_bench_layout`, dropped after), a cost-line-like table (ids, account, billing
period, charge period, service, region, three amounts, tags; the primary key and charge-window index the real
table has) in two layouts, each holding two accounts' lines of one month:

- month:   PARTITION BY RANGE (billing_period_start); both accounts in one month partition.
- account: RANGE by month, then LIST by account; one leaf per (month, account).

Timed for one account: replacing its month (month layout: DELETE its lines, then INSERT the new ones with
the indexes maintained; account layout: INSERT into a standalone table, build the indexes, detach + drop
the old leaf and attach the new one), dropping its month (DELETE vs detach + drop), and the planning time
of a query on one account's month with 24 months x 40 accounts of empty partitions around it. Last line:
key=value.
"""

from __future__ import annotations

import argparse
import os
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg

DATABASE = "finops_bench_layout"
COLUMNS = """id bigint NOT NULL, account_id bigint NOT NULL, billing_period_start timestamptz NOT NULL,
    charge_period_start timestamptz NOT NULL, service_name text, region_id text, billed_cost numeric(38, 15),
    effective_cost numeric(38, 15), list_cost numeric(38, 15), tags jsonb"""
MONTH = "'2026-01-01+00'"
NEXT = "'2026-02-01+00'"


def rows_sql(account: int, rows: int, first_id: int) -> str:
    return f"""SELECT {first_id} + g, {account}, {MONTH}::timestamptz,
        {MONTH}::timestamptz + (g % 744) * interval '1 hour', 'service-' || (g % 40), 'region-' || (g % 8),
        (g % 1000) / 7.0, (g % 1000) / 7.0, (g % 1000) / 6.0, jsonb_build_object('team', 'team-' || (g % 12))
        FROM generate_series(1, {rows}) AS g"""


def timed(conn, *statements: str) -> float:
    started = time.perf_counter()
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)
    return time.perf_counter() - started


def setup(conn, rows: int) -> None:
    conn.execute(f"CREATE TABLE by_month ({COLUMNS}) PARTITION BY RANGE (billing_period_start)")
    conn.execute(f"CREATE TABLE by_month_p PARTITION OF by_month FOR VALUES FROM ({MONTH}) TO ({NEXT})")
    conn.execute(f"CREATE TABLE by_account ({COLUMNS}) PARTITION BY RANGE (billing_period_start)")
    conn.execute(
        f"CREATE TABLE by_account_p PARTITION OF by_account FOR VALUES FROM ({MONTH}) TO ({NEXT}) "
        "PARTITION BY LIST (account_id)"
    )
    for account in (1, 2):
        conn.execute(f"CREATE TABLE by_account_p_a{account} PARTITION OF by_account_p FOR VALUES IN ({account})")
    for table in ("by_month", "by_account"):
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id, billing_period_start, account_id)")
        conn.execute(f"CREATE INDEX ON {table} (account_id, charge_period_start)")
        for account in (1, 2):
            conn.execute(f"INSERT INTO {table} {rows_sql(account, rows, account * 10_000_000)}")
    conn.execute("VACUUM ANALYZE")


def planning_ms(conn, table: str) -> float:
    plans = []
    for _ in range(20):
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT sum(billed_cost) FROM {table} WHERE account_id = 1 "  # noqa: S608
            f"AND billing_period_start >= {MONTH} AND billing_period_start < {NEXT}"
        ).fetchone()[0][0]
        plans.append(plan["Planning Time"])
    return sorted(plans)[len(plans) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="lines per account-month")
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finops")
    parts = urlsplit(base)
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    url = urlunsplit(parts._replace(path=f"/{DATABASE}", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            setup(conn, args.rows)
            n = args.rows
            conn.execute("CHECKPOINT")
            month_replace = timed(
                conn, "DELETE FROM by_month WHERE account_id = 1", f"INSERT INTO by_month {rows_sql(1, n, 50_000_000)}"
            )
            conn.execute("CHECKPOINT")
            account_replace = timed(
                conn,
                f"CREATE TABLE stage (LIKE by_account, CHECK (account_id = 1 AND billing_period_start >= {MONTH} "
                f"AND billing_period_start < {NEXT}))",
                f"INSERT INTO stage {rows_sql(1, n, 50_000_000)}",
                "ALTER TABLE stage ADD PRIMARY KEY (id, billing_period_start, account_id)",
                "CREATE INDEX ON stage (account_id, charge_period_start)",
                "ALTER TABLE by_account_p DETACH PARTITION by_account_p_a1",
                "DROP TABLE by_account_p_a1",
                "ALTER TABLE stage RENAME TO by_account_p_a1",
                "ALTER TABLE by_account_p ATTACH PARTITION by_account_p_a1 FOR VALUES IN (1)",
            )
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
            month_drop = timed(conn, "DELETE FROM by_month WHERE account_id = 1")
            account_drop = timed(
                conn, "ALTER TABLE by_account_p DETACH PARTITION by_account_p_a1", "DROP TABLE by_account_p_a1"
            )
            # 24 months x 40 accounts of leaves around the measured month, against 24 month partitions
            for m in range(24):  # 2024-01 .. 2025-12
                low, high = f"'2024-01-01+00'::timestamptz + interval '{m} months'", f"interval '{m + 1} months'"
                bounds = f"FROM ({low}) TO ('2024-01-01+00'::timestamptz + {high})"
                conn.execute(f"CREATE TABLE by_month_{m} PARTITION OF by_month FOR VALUES {bounds}")
                conn.execute(
                    f"CREATE TABLE by_account_{m} PARTITION OF by_account FOR VALUES {bounds} "
                    "PARTITION BY LIST (account_id)"
                )
                for account in range(1, 41):
                    conn.execute(
                        f"CREATE TABLE by_account_{m}_a{account} PARTITION OF by_account_{m} FOR VALUES IN ({account})"
                    )
            conn.execute("ANALYZE")
            plan_month, plan_account = planning_ms(conn, "by_month"), planning_ms(conn, "by_account")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    print(
        f"replace one account's month of {n:,} lines: month layout {month_replace:.2f} s, "
        f"month x account layout {account_replace:.2f} s"
    )
    print(f"drop one account's month: DELETE {month_drop:.2f} s, detach + drop {account_drop:.3f} s")
    print(
        f"planning a pruned query: 1 + 24 month partitions {plan_month:.2f} ms, "
        f"1 + 24 x 40 leaves {plan_account:.2f} ms"
    )
    figures = {
        "rows": n,
        "replace_month_s": round(month_replace, 2),
        "replace_leaf_s": round(account_replace, 2),
        "replace_ratio": round(month_replace / account_replace, 2),
        "drop_delete_s": round(month_drop, 2),
        "drop_leaf_s": round(account_drop, 3),
        "plan_month_ms": round(plan_month, 2),
        "plan_leaves_ms": round(plan_account, 2),
    }
    print("layout " + " ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

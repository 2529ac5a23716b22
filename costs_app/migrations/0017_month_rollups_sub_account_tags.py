"""Monthly rollups by sub-account too, and monthly tag rollups, both kept by statement-level triggers.

Budgets read a period's whole months from these (a year of a sub-account's or a tag's spend is 12 rows per
combination, not 365), so the monthly rollups need every dimension a budget filters on: the sub-account is added
to CostMonthRollup and CostTagMonthRollup sums CostTagRollup by month the same way. The triggers of 0016 are
redefined with the wider key and the table refilled from the daily rollups; the tag table gets the same four
triggers on CostTagRollup and is filled from it. A row emptied by a delete is removed among the months the
statement touched (through the unique index on account and month), not by a scan of the whole table.
"""

from decimal import Decimal

import django.db.models.deletion
from django.db import migrations, models

MONTH_OF_DAY = "(day - (EXTRACT(DAY FROM day)::int - 1))"
SUMS = "sum(billed_cost), sum(effective_cost), sum(list_cost), sum(line_count), count(*)"


def kept_by_triggers(*, source: str, target: str, key: list[str], prefix: str) -> str:
    """The four trigger functions and (when `create`) triggers keeping `target` = `source` summed by month."""
    dims = ", ".join(key)
    grouped = lambda table: f"""SELECT account_id, {MONTH_OF_DAY} AS month, {dims},
                      {SUMS} FROM {table} GROUP BY account_id, 2, {dims}"""  # noqa: E731
    conflict = f"account_id, month, {dims}"
    match_m = ", ".join(f"m.{c}" for c in ["account_id", "month", *key])
    match_d = ", ".join(f"d.{c}" for c in ["account_id", "month", *key])
    add = f"""
INSERT INTO {target} AS m ({conflict}, billed_cost, effective_cost, list_cost, line_count, rollup_rows)
{grouped("new_rows")}
ON CONFLICT ({conflict}) DO UPDATE SET
    billed_cost = m.billed_cost + EXCLUDED.billed_cost,
    effective_cost = m.effective_cost + EXCLUDED.effective_cost,
    list_cost = m.list_cost + EXCLUDED.list_cost,
    line_count = m.line_count + EXCLUDED.line_count,
    rollup_rows = m.rollup_rows + EXCLUDED.rollup_rows;
"""
    subtract = f"""
UPDATE {target} AS m SET
    billed_cost = m.billed_cost - d.billed, effective_cost = m.effective_cost - d.effective,
    list_cost = m.list_cost - d.list, line_count = m.line_count - d.lines, rollup_rows = m.rollup_rows - d.n
FROM ({grouped("old_rows")}) AS d (account_id, month, {dims}, billed, effective, list, lines, n)
WHERE ({match_m}) = ({match_d});
DELETE FROM {target} AS m
USING (SELECT DISTINCT account_id, {MONTH_OF_DAY} AS month FROM old_rows) AS d
WHERE m.account_id = d.account_id AND m.month = d.month AND m.rollup_rows <= 0;
"""
    return f"""
CREATE OR REPLACE FUNCTION {prefix}_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {add} RETURN NULL; END $$;
CREATE OR REPLACE FUNCTION {prefix}_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {subtract} RETURN NULL; END $$;
CREATE OR REPLACE FUNCTION {prefix}_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {subtract} {add} RETURN NULL; END $$;
CREATE OR REPLACE FUNCTION {prefix}_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN DELETE FROM {target}; RETURN NULL; END $$;
DELETE FROM {target};
INSERT INTO {target} ({conflict}, billed_cost, effective_cost, list_cost, line_count, rollup_rows)
{grouped(source)};
"""


DAILY, MONTHLY = "costs_app_costdailyrollup", "costs_app_costmonthrollup"
TAGS, TAG_MONTHLY = "costs_app_costtagrollup", "costs_app_costtagmonthrollup"
DAILY_KEY = ["service_name", "sub_account_id", "region_id", "billing_currency"]
TAG_KEY = ["tag_key", "tag_value", "service_name", "sub_account_id", "region_id", "billing_currency"]

MONTHLY_FORWARD = kept_by_triggers(source=DAILY, target=MONTHLY, key=DAILY_KEY, prefix="finops_month_rollup")
MONTHLY_BACKWARD = kept_by_triggers(
    source=DAILY, target=MONTHLY, key=["service_name", "region_id", "billing_currency"], prefix="finops_month_rollup"
)
TAG_FORWARD = kept_by_triggers(source=TAGS, target=TAG_MONTHLY, key=TAG_KEY, prefix="finops_tag_month_rollup") + f"""
CREATE TRIGGER tag_month_rollup_insert AFTER INSERT ON {TAGS} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION finops_tag_month_rollup_insert();
CREATE TRIGGER tag_month_rollup_delete AFTER DELETE ON {TAGS} REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION finops_tag_month_rollup_delete();
CREATE TRIGGER tag_month_rollup_update AFTER UPDATE ON {TAGS} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION finops_tag_month_rollup_update();
CREATE TRIGGER tag_month_rollup_truncate AFTER TRUNCATE ON {TAGS}
    FOR EACH STATEMENT EXECUTE FUNCTION finops_tag_month_rollup_truncate();
"""
TAG_BACKWARD = f"""
DROP TRIGGER tag_month_rollup_insert ON {TAGS};
DROP TRIGGER tag_month_rollup_delete ON {TAGS};
DROP TRIGGER tag_month_rollup_update ON {TAGS};
DROP TRIGGER tag_month_rollup_truncate ON {TAGS};
DROP FUNCTION finops_tag_month_rollup_insert(), finops_tag_month_rollup_delete(), finops_tag_month_rollup_update(),
    finops_tag_month_rollup_truncate();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('costs_app', '0016_month_rollups'),
        ('providers_app', '0006_export_state_db_cascade'),
    ]

    operations = [
        # Backwards, last: the functions of 0016 again and the table refilled by them, with the old key.
        migrations.RunSQL(migrations.RunSQL.noop, MONTHLY_BACKWARD),
        migrations.CreateModel(
            name='CostTagMonthRollup',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField(help_text="The first day of the month of the tag rollups' days (UTC).")),
                ('tag_key', models.TextField()),
                ('tag_value', models.TextField(blank=True, default='')),
                ('service_name', models.TextField(blank=True, default='')),
                ('sub_account_id', models.TextField(blank=True, default='')),
                ('region_id', models.TextField(blank=True, default='')),
                ('billing_currency', models.CharField(max_length=3)),
                ('billed_cost', models.DecimalField(decimal_places=15, default=Decimal('0'), max_digits=38)),
                ('effective_cost', models.DecimalField(decimal_places=15, default=Decimal('0'), max_digits=38)),
                ('list_cost', models.DecimalField(decimal_places=15, default=Decimal('0'), max_digits=38)),
                ('line_count', models.BigIntegerField(default=0)),
                ('rollup_rows', models.IntegerField(default=0, help_text='Tag rollup rows summed here.')),
            ],
        ),
        migrations.RemoveConstraint(
            model_name='costmonthrollup',
            name='month_rollup_dims_uniq',
        ),
        migrations.AddField(
            model_name='costmonthrollup',
            name='sub_account_id',
            field=models.TextField(blank=True, default=''),
        ),
        migrations.AddConstraint(
            model_name='costmonthrollup',
            constraint=models.UniqueConstraint(fields=('account', 'month', 'service_name', 'sub_account_id', 'region_id', 'billing_currency'), name='month_rollup_dims_uniq'),
        ),
        migrations.AddField(
            model_name='costtagmonthrollup',
            name='account',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='monthly_tag_costs', to='providers_app.cloudaccount'),
        ),
        migrations.AddIndex(
            model_name='costtagmonthrollup',
            index=models.Index(fields=['tag_key', 'month'], name='tag_month_rollup_key_idx'),
        ),
        migrations.AddConstraint(
            model_name='costtagmonthrollup',
            constraint=models.UniqueConstraint(fields=('account', 'month', 'tag_key', 'tag_value', 'service_name', 'sub_account_id', 'region_id', 'billing_currency'), name='tag_month_rollup_dims_uniq'),
        ),
        # Backwards: emptied here, so the narrower constraint can come back; refilled by the first operation.
        migrations.RunSQL(MONTHLY_FORWARD, f"DELETE FROM {MONTHLY};"),
        migrations.RunSQL(TAG_FORWARD, TAG_BACKWARD),
    ]

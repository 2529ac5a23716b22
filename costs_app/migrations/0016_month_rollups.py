"""Monthly rollups kept by triggers on the daily rollups (models.CostMonthRollup), filled from the daily rollups."""

import django.db.models.deletion
from decimal import Decimal
from django.db import migrations, models

DAILY = "costs_app_costdailyrollup"
MONTHLY = "costs_app_costmonthrollup"
KEY = "account_id, month, service_name, region_id, billing_currency"
# The month of a date without a time zone in sight: the date minus its day of the month, plus one.
MONTH_OF_DAY = "(day - (EXTRACT(DAY FROM day)::int - 1))"
SUMS = "sum(billed_cost), sum(effective_cost), sum(list_cost), sum(line_count), count(*)"


def grouped(source: str) -> str:
    return f"""SELECT account_id, {MONTH_OF_DAY} AS month, service_name, region_id, billing_currency,
                      {SUMS} FROM {source} GROUP BY 1, 2, 3, 4, 5"""


ADD = f"""
INSERT INTO {MONTHLY} AS m ({KEY}, billed_cost, effective_cost, list_cost, line_count, rollup_rows)
{grouped("new_rows")}
ON CONFLICT ({KEY}) DO UPDATE SET
    billed_cost = m.billed_cost + EXCLUDED.billed_cost,
    effective_cost = m.effective_cost + EXCLUDED.effective_cost,
    list_cost = m.list_cost + EXCLUDED.list_cost,
    line_count = m.line_count + EXCLUDED.line_count,
    rollup_rows = m.rollup_rows + EXCLUDED.rollup_rows;
"""
SUBTRACT = f"""
UPDATE {MONTHLY} AS m SET
    billed_cost = m.billed_cost - d.billed, effective_cost = m.effective_cost - d.effective,
    list_cost = m.list_cost - d.list, line_count = m.line_count - d.lines, rollup_rows = m.rollup_rows - d.n
FROM ({grouped("old_rows")}) AS d (account_id, month, service_name, region_id, billing_currency,
                                  billed, effective, list, lines, n)
WHERE (m.account_id, m.month, m.service_name, m.region_id, m.billing_currency)
    = (d.account_id, d.month, d.service_name, d.region_id, d.billing_currency);
DELETE FROM {MONTHLY} WHERE rollup_rows <= 0;
"""

TRIGGERS = f"""
CREATE FUNCTION finops_month_rollup_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {ADD} RETURN NULL; END $$;
CREATE FUNCTION finops_month_rollup_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {SUBTRACT} RETURN NULL; END $$;
CREATE FUNCTION finops_month_rollup_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {SUBTRACT} {ADD} RETURN NULL; END $$;
CREATE FUNCTION finops_month_rollup_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN DELETE FROM {MONTHLY}; RETURN NULL; END $$;

CREATE TRIGGER month_rollup_insert AFTER INSERT ON {DAILY} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION finops_month_rollup_insert();
CREATE TRIGGER month_rollup_delete AFTER DELETE ON {DAILY} REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION finops_month_rollup_delete();
CREATE TRIGGER month_rollup_update AFTER UPDATE ON {DAILY} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION finops_month_rollup_update();
CREATE TRIGGER month_rollup_truncate AFTER TRUNCATE ON {DAILY}
    FOR EACH STATEMENT EXECUTE FUNCTION finops_month_rollup_truncate();

INSERT INTO {MONTHLY} ({KEY}, billed_cost, effective_cost, list_cost, line_count, rollup_rows)
{grouped(DAILY)};
"""

# The TRUNCATE trigger DELETEs: a TRUNCATE of both tables in one statement (Django's flush) would refuse a TRUNCATE of
# a table it is already truncating.
DROP = f"""
DROP TRIGGER month_rollup_insert ON {DAILY};
DROP TRIGGER month_rollup_delete ON {DAILY};
DROP TRIGGER month_rollup_update ON {DAILY};
DROP TRIGGER month_rollup_truncate ON {DAILY};
DROP FUNCTION finops_month_rollup_insert(), finops_month_rollup_delete(), finops_month_rollup_update(),
    finops_month_rollup_truncate();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('costs_app', '0015_merge_partitions_dashboard_index'),
        ('providers_app', '0006_export_state_db_cascade'),
    ]

    operations = [
        migrations.CreateModel(
            name='CostMonthRollup',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField(help_text="The first day of the month of the daily rollups' days (UTC).")),
                ('service_name', models.TextField(blank=True, default='')),
                ('region_id', models.TextField(blank=True, default='')),
                ('billing_currency', models.CharField(max_length=3)),
                ('billed_cost', models.DecimalField(decimal_places=15, default=Decimal('0'), max_digits=38)),
                ('effective_cost', models.DecimalField(decimal_places=15, default=Decimal('0'), max_digits=38)),
                ('list_cost', models.DecimalField(decimal_places=15, default=Decimal('0'), max_digits=38)),
                ('line_count', models.BigIntegerField(default=0)),
                ('rollup_rows', models.IntegerField(default=0, help_text='Daily rollup rows summed here.')),
                ('account', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='monthly_costs', to='providers_app.cloudaccount')),
            ],
            options={
                'indexes': [models.Index(fields=['month'], name='month_rollup_month_idx')],
                'constraints': [models.UniqueConstraint(fields=('account', 'month', 'service_name', 'region_id', 'billing_currency'), name='month_rollup_dims_uniq')],
            },
        ),
        migrations.RunSQL(TRIGGERS, DROP),
    ]

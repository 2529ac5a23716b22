"""Cost lines and rollups: no FK constraint and no single-column index on account (see models.BULK_ACCOUNT),
and no (account, resource_id) index on cost lines (a long text key per row, served no query).

In their place a trigger removes an account's cost lines and rollups when the account row is deleted by a
statement that bypasses Django's CASCADE, so no row ever outlives its account.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('costs_app', '0009_merge_budgets_anomalies'),
        ('providers_app', '0002_export_state'),
    ]

    operations = [
        migrations.RunSQL(
            sql="""
            CREATE FUNCTION finops_account_cost_data_delete() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM costs_app_costlineitem WHERE account_id = OLD.id;
                DELETE FROM costs_app_costdailyrollup WHERE account_id = OLD.id;
                DELETE FROM costs_app_costtagrollup WHERE account_id = OLD.id;
                RETURN OLD;
            END $$;
            CREATE TRIGGER cloudaccount_cost_data_delete AFTER DELETE ON providers_app_cloudaccount
                FOR EACH ROW EXECUTE FUNCTION finops_account_cost_data_delete();
            """,
            reverse_sql="""
            DROP TRIGGER cloudaccount_cost_data_delete ON providers_app_cloudaccount;
            DROP FUNCTION finops_account_cost_data_delete();
            """,
        ),
        migrations.AlterField(
            model_name='costdailyrollup',
            name='account',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='daily_costs', to='providers_app.cloudaccount'),
        ),
        migrations.AlterField(
            model_name='costlineitem',
            name='account',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='cost_lines', to='providers_app.cloudaccount'),
        ),
        migrations.AlterField(
            model_name='costtagrollup',
            name='account',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='daily_tag_costs', to='providers_app.cloudaccount'),
        ),
        migrations.RemoveIndex(model_name="costlineitem", name="costline_acct_resource_idx"),
    ]

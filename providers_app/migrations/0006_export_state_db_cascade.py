"""An account's export fingerprints go with it in the database too (ON DELETE CASCADE), like its cost data
(costs_app 0010's trigger): a DELETE of the account that bypasses Django is not refused by a bookkeeping row.
Django 5.2 cannot say this in the model (`db_on_delete` is Django 6), so the constraint is replaced here."""

from django.db import migrations

FIND = """
SELECT con.conname FROM pg_constraint con
JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = ANY (con.conkey)
WHERE con.conrelid = 'providers_app_exportstate'::regclass AND con.contype = 'f' AND att.attname = 'account_id'
"""


def replace(on_delete: str) -> str:
    return f"""
DO $$
DECLARE name text;
BEGIN
    FOR name IN {FIND} LOOP
        EXECUTE format('ALTER TABLE providers_app_exportstate DROP CONSTRAINT %I', name);
    END LOOP;
    ALTER TABLE providers_app_exportstate ADD CONSTRAINT providers_app_exportstate_account_id_fk
        FOREIGN KEY (account_id) REFERENCES providers_app_cloudaccount (id) {on_delete} DEFERRABLE INITIALLY DEFERRED;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("providers_app", "0005_merge_teams_encrypted_fields")]

    operations = [migrations.RunSQL(sql=replace("ON DELETE CASCADE"), reverse_sql=replace(""))]

"""Migration 0014: an unpartitioned cost line table with data becomes the partitioned layout, rows and ids intact."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.costs_app import focus_lines

BEFORE = [("costs_app", "0013_merge_teams_encrypted_fields")]
AFTER = [("costs_app", "0014_costline_partitions")]
LINES = "costs_app_costlineitem"


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


def line(account, month: int, cost: str, **extra) -> dict:
    return {
        "account": account,
        "billed_cost": Decimal(cost), "effective_cost": Decimal(cost), "list_cost": Decimal(cost),
        "billing_account_id": "1", "billing_currency": "USD",
        "billing_period_start": datetime(2026, month, 1, tzinfo=UTC),
        "billing_period_end": datetime(2026, month + 1, 1, tzinfo=UTC),
        "charge_period_start": datetime(2026, month, 3, tzinfo=UTC),
        "charge_period_end": datetime(2026, month, 4, tzinfo=UTC),
        "charge_category": "Usage", "invoice_issuer_name": "AWS", "provider_name": "AWS", "publisher_name": "AWS",
        "service_name": "EC2", **extra,
    }  # fmt: skip


def figures() -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT account_id, billing_period_start, count(*), sum(billed_cost), array_agg(id ORDER BY id) "  # noqa: S608
            f"FROM {LINES} GROUP BY 1, 2 ORDER BY 1, 2"
        )
        return {(a, p): (n, total, ids) for a, p, n, total, ids in cursor.fetchall()}


def leaves() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf "
            "ORDER BY 1",
            [LINES],
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_unpartitioned_lines_and_rollups_survive_the_migration_and_the_new_layout_works(tmp_path):
    try:
        # given: lines of three months and two accounts in the old single table, and their rollups
        old = migrate(BEFORE)
        Account = old.get_model("providers_app", "CloudAccount")
        prod = Account.objects.create(provider="focus", name="prod", settings={})
        dev = Account.objects.create(provider="focus", name="dev", settings={})
        Line = old.get_model("costs_app", "CostLineItem")
        for month in (1, 2, 3):
            for i in range(4):
                Line.objects.create(**line(prod, month, f"{month}.{i}5"))
            Line.objects.create(**line(dev, month, "100.000000000000001"))
        Line.objects.create(**line(dev, 2, "7", billing_period_start=datetime(2026, 2, 15, tzinfo=UTC)))
        old.get_model("costs_app", "CostDailyRollup").objects.create(
            account=prod, day=datetime(2026, 1, 3).date(), billing_period_start=datetime(2026, 1, 1, tzinfo=UTC),
            service_name="EC2", billing_currency="USD", billed_cost=Decimal("4.6"), line_count=4,
        )  # fmt: skip
        before = figures()
        highest = max(max(ids) for _, _, ids in before.values())

        # when
        migrate(AFTER)

        # then: every line kept with its id, in the leaf of its month and account
        assert figures() == before
        assert leaves() == sorted([
            f"{LINES}_default",
            f"{LINES}_p202601_a{dev.pk}", f"{LINES}_p202601_a{prod.pk}", f"{LINES}_p202601_default",
            f"{LINES}_p202602_a{dev.pk}", f"{LINES}_p202602_a{prod.pk}", f"{LINES}_p202602_default",
            f"{LINES}_p202603_a{dev.pk}", f"{LINES}_p202603_a{prod.pk}", f"{LINES}_p202603_default",
        ])  # fmt: skip
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ONLY {LINES}_default")  # noqa: S608
            assert cursor.fetchone()[0] == 0
            cursor.execute("SELECT count(*), sum(billed_cost) FROM costs_app_costdailyrollup")
            assert cursor.fetchone() == (1, Decimal("4.6"))
        call_command("migrate", verbosity=0)  # the rest of the project's migrations run on top

        from costs_app.models import CostLineItem
        from costs_app.services.export import focus_export
        from costs_app.services.ingest import focus_file_import
        from providers_app.models import CloudAccount

        # and: new ids continue after the old ones; the ORM writes into the right leaf
        added = CostLineItem.objects.create(**line(CloudAccount.objects.get(pk=prod.pk), 3, "1"))
        assert added.pk > highest
        assert CostLineItem.objects.get(pk=added.pk).billed_cost == Decimal("1")

        # and: an import replaces prod's March, the other months and accounts untouched
        rows = [focus_lines.line(start=datetime(2026, 3, day, tzinfo=UTC), cost="2.5") for day in (1, 2, 3)]
        path = focus_lines.write_focus(tmp_path / "march.csv", rows)
        result = focus_file_import(account=CloudAccount.objects.get(pk=prod.pk), path=str(path))
        assert (result.rows_loaded, result.rows_replaced) == (3, 5)
        after = figures()
        march = datetime(2026, 3, 1, tzinfo=UTC)
        assert after[(prod.pk, march)][:2] == (3, Decimal("7.5"))
        assert {k: v for k, v in after.items() if k != (prod.pk, march)} == {
            k: v for k, v in before.items() if k != (prod.pk, march)
        }

        # and: the export reads the account's months from the new layout
        exported = focus_export(
            account=CloudAccount.objects.get(pk=prod.pk), start="2026-01", end="2026-03", out=tmp_path / "export.csv"
        )
        assert exported == 4 + 4 + 3  # the line added above was replaced by the import

        # and: deleting an account deletes its lines from every month
        CloudAccount.objects.filter(pk=dev.pk).delete()
        assert not CostLineItem.objects.filter(account_id=dev.pk).exists()
        assert CostLineItem.objects.filter(account_id=prod.pk).count() == 4 + 4 + 3
    finally:
        call_command("migrate", verbosity=0)

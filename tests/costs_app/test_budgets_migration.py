"""Migration 0006: budgets of the old shape (one account, one service, a list of percentages) keep alerting the same."""

from datetime import date
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("costs_app", "0005_optim_recommendation_lifecycle")]
AFTER = [("costs_app", "0006_budgets_scope_thresholds")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_old_budgets_and_alerts_are_migrated_forwards_and_backwards():
    try:
        # given: rows of the old shape
        old = migrate(BEFORE)
        account = old.get_model("providers_app", "CloudAccount").objects.create(
            provider="focus", name="prod", settings={}
        )
        OldBudget = old.get_model("costs_app", "Budget")
        scoped = OldBudget.objects.create(
            name="prod ec2", account=account, service_name="Amazon EC2", amount=Decimal("500"),
            currency="USD", period="quarterly", thresholds=[80, 50.5, 100],
        )  # fmt: skip
        OldBudget.objects.create(name="all", amount=Decimal("9000"), thresholds=[90, "junk"])
        old.get_model("costs_app", "BudgetAlert").objects.create(
            budget=scoped, period_start=date(2024, 7, 1), threshold=Decimal("80"), spend=Decimal("410"),
            percentage=Decimal("82"), notification_errors=["channel 'x': HTTP 500"],
        )  # fmt: skip

        # when
        new = migrate(AFTER)
        # then: same scope, the same percentages of ACTUAL spend (no forecast threshold added), alert figures filled
        Budget = new.get_model("costs_app", "Budget")
        migrated = Budget.objects.get(name="prod ec2")
        assert list(migrated.accounts.values_list("name", flat=True)) == ["prod"]
        assert migrated.service_names == ["Amazon EC2"] and migrated.region_ids == [] and migrated.tag_key == ""
        assert migrated.thresholds == [
            {"type": "percentage", "value": "80", "basis": "actual"},
            {"type": "percentage", "value": "50.5", "basis": "actual"},
            {"type": "percentage", "value": "100", "basis": "actual"},
        ]
        unscoped = Budget.objects.get(name="all")
        assert list(unscoped.accounts.all()) == [] and unscoped.service_names == []
        # an entry the old form would have refused is kept as it was, for the admin to show and fix
        assert unscoped.thresholds == [{"type": "percentage", "value": "90", "basis": "actual"}, "junk"]
        alert = new.get_model("costs_app", "BudgetAlert").objects.get()
        assert (alert.threshold_type, alert.basis, alert.threshold) == ("percentage", "actual", Decimal("80"))
        assert (alert.period_end, alert.currency) == (date(2024, 9, 30), "USD")
        assert (alert.budget_amount, alert.threshold_amount) == (Decimal("500"), Decimal("400"))

        # when: a forecasted alert exists, and the migration is reversed
        new.get_model("costs_app", "BudgetAlert").objects.create(
            budget_id=migrated.id, period_start=date(2024, 7, 1), threshold=Decimal("100"), basis="forecasted",
            spend=Decimal("410"), percentage=Decimal("82"),
        )  # fmt: skip
        back = migrate(BEFORE)
        # then
        reverted = back.get_model("costs_app", "Budget").objects.get(name="prod ec2")
        assert (reverted.account_id, reverted.service_name) == (account.id, "Amazon EC2")
        assert reverted.thresholds == [80, 50.5, 100]
        assert list(back.get_model("costs_app", "BudgetAlert").objects.values_list("threshold", flat=True)) == [
            Decimal("80")
        ]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

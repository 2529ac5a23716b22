"""Imports of different accounts of the same months at the same time, as a fan-out sync runs them on a worker."""

import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count, Sum

from costs_app.models import CostLineItem
from costs_app.services.ingest import focus_file_import
from tests.factories import CloudAccountFactory

SAMPLE = Path(settings.BASE_DIR) / "tests" / "providers_app" / "data" / "focus_sample_1.0.csv"


def import_all_at_once(accounts) -> dict:
    """One thread (and database connection) per account, started together; returns account id -> result or error."""
    start = threading.Barrier(len(accounts))
    outcome = {}

    def run(account):
        try:
            start.wait()
            outcome[account.id] = focus_file_import(account=account, path=str(SAMPLE))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            outcome[account.id] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(account,)) for account in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcome


@pytest.mark.django_db(transaction=True)
def test_imports_of_three_accounts_into_the_same_months_at_once_all_succeed_and_reimports_too():
    # given: three accounts whose exports cover the same billing months
    accounts = [CloudAccountFactory(settings={"path": str(SAMPLE)}) for _ in range(3)]
    # when: all three load at once, then all three reload at once (the swap path: each replaces its own leaf)
    for round_ in ("load", "reload"):
        outcome = import_all_at_once(accounts)
        # then: no deadlock, no error; each account holds exactly one copy of the file
        errors = {account_id: repr(value) for account_id, value in outcome.items() if isinstance(value, Exception)}
        assert errors == {}, round_
        assert len(outcome) == 3
        per_account = dict(
            CostLineItem.objects.values_list("account_id").annotate(n=Count("id")).values_list("account_id", "n")
        )
        rows = outcome[accounts[0].id].rows_loaded
        assert rows > 0
        assert per_account == {account.id: rows for account in accounts}, round_
    sums = CostLineItem.objects.values("account_id").annotate(total=Sum("billed_cost"))
    assert len({row["total"] for row in sums}) == 1  # the same file: the same BilledCost sum for each
    # and: every account's month is a leaf of its own, none left in a DEFAULT partition
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM costs_app_costlineitem_default")
        assert cursor.fetchone()[0] == 0

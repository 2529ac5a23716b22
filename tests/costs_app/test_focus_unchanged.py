"""A FOCUS-file account's sync skips files it already loaded (path, size, mtime and content unchanged)."""

import os
from decimal import Decimal

import pytest
from django.db.models import Max

from costs_app.models import CostLineItem
from costs_app.services.ingest import account_cost_sync
from providers_app.models import ExportState
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE_ROWS, sample_rows, write_csv

pytestmark = pytest.mark.django_db

PERIODS = ["2024-09", "2024-10"]


def newest_line_id(account) -> int:
    """Every load writes new rows with larger ids: an unchanged newest id means nothing was reloaded."""
    return CostLineItem.objects.filter(account=account).aggregate(m=Max("id"))["m"]


def focus_account(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    write_csv(folder / "focus.csv", *sample_rows())  # as the rewrites below write it, byte for byte
    return CloudAccountFactory(settings={"path": str(folder)}), folder


def test_a_duplicate_sync_of_unchanged_files_loads_nothing(tmp_path):
    # given: the account's folder loaded once
    account, _ = focus_account(tmp_path)
    first = account_cost_sync(account_id=account.id)
    newest = newest_line_id(account)
    # when
    again = account_cost_sync(account_id=account.id)
    # then
    assert first.rows_loaded == SAMPLE_ROWS
    assert (again.rows_read, again.rows_loaded, again.rows_replaced) == (0, 0, 0)
    assert again.unchanged_periods == PERIODS
    assert newest_line_id(account) == newest
    assert CostLineItem.objects.filter(account=account).count() == SAMPLE_ROWS
    assert sorted(ExportState.objects.filter(account=account).values_list("billing_period", "rows")) == [
        ("2024-09", 999),
        ("2024-10", 1),
    ]


def test_a_same_size_rewrite_with_the_old_mtime_is_reloaded(tmp_path):
    # given: loaded once, then one cost changed in place, same length, modification time put back
    account, folder = focus_account(tmp_path)
    account_cost_sync(account_id=account.id)
    file = folder / "focus.csv"
    stat = file.stat()
    header, rows = sample_rows()
    old_cost = rows[0]["BilledCost"]
    new_cost = old_cost[:-1] + ("1" if old_cost[-1] != "1" else "2")
    rows[0]["BilledCost"] = new_cost
    write_csv(file, header, rows)
    assert file.stat().st_size == stat.st_size
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # when
    result = account_cost_sync(account_id=account.id)
    # then: the content hash saw it
    assert result.rows_loaded == SAMPLE_ROWS
    assert result.unchanged_periods == []
    assert CostLineItem.objects.get(account=account, source_row=1).billed_cost == Decimal(new_cost)


def test_a_new_file_in_the_folder_reloads_the_account(tmp_path):
    # given
    account, folder = focus_account(tmp_path)
    account_cost_sync(account_id=account.id)
    header, rows = sample_rows()
    october = [row for row in rows if row["BillingPeriodStart"].startswith("2024-10")]
    # when: a second export appears beside the first
    write_csv(folder / "focus-late.csv", header, october)
    result = account_cost_sync(account_id=account.id)
    # then
    assert result.rows_loaded == SAMPLE_ROWS + len(october)
    assert result.files == [str(folder / "focus-late.csv"), str(folder / "focus.csv")]
    assert result.unchanged_periods == []


def test_one_period_then_all_loads_the_rest_and_force_reloads(tmp_path):
    # given: only October loaded
    account, _ = focus_account(tmp_path)
    account_cost_sync(account_id=account.id, billing_period="2024-10")
    # when / then: a sync of every period is not "unchanged" (September was never loaded)
    whole = account_cost_sync(account_id=account.id)
    assert whole.rows_loaded == SAMPLE_ROWS
    # when / then: October again, the files unchanged since the whole load
    october = account_cost_sync(account_id=account.id, billing_period="2024-10")
    assert (october.rows_loaded, october.unchanged_periods) == (0, ["2024-10"])
    # when / then: force loads whatever the fingerprint
    newest = newest_line_id(account)
    forced = account_cost_sync(account_id=account.id, force=True)
    assert forced.rows_loaded == SAMPLE_ROWS
    assert newest_line_id(account) > newest


def test_a_failed_load_records_no_fingerprint_so_the_next_sync_tries_again(tmp_path):
    # given: a file that breaks a FOCUS rule
    account, folder = focus_account(tmp_path)
    header, rows = sample_rows()
    rows[5]["BilledCost"] = "1.2.3"
    write_csv(folder / "focus.csv", header, rows)
    with pytest.raises(Exception, match="decimal"):
        account_cost_sync(account_id=account.id)
    # then
    assert not ExportState.objects.filter(account=account).exists()
    with pytest.raises(Exception, match="decimal"):
        account_cost_sync(account_id=account.id)

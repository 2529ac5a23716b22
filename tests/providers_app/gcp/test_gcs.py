"""Billing files in a GCS bucket (FOCUS CSV, CSV.gz, Parquet): google-cloud-storage on gcp-storage-emulator."""

import csv
import gzip
import io
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db.models import Sum

from costs_app.models import CostLineItem
from costs_app.services.ingest import FocusRulesError, account_cost_sync
from finops.errors import PermanentError, TransientError
from providers_app.models import Credential, ExportState
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import sample_rows

pytestmark = pytest.mark.django_db

BUCKET = "acme-billing-exports"


def focus_rows(period: str) -> tuple[list[str], list[dict]]:
    """The FOCUS sample's rows of one billing period, nulls written as empty values (as BigQuery exports them)."""
    header, rows = sample_rows()
    rows = [
        {k: ("" if v == "NULL" else v) for k, v in r.items()} for r in rows if r["BillingPeriodStart"][:7] == period
    ]
    return header, rows


def csv_bytes(header, rows, *, gz=False) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode()
    return gzip.compress(data) if gz else data


def parquet_bytes(header, rows) -> bytes:
    table = pa.table({h: pa.array([r[h] or None for r in rows], pa.string()) for h in header})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


@pytest.fixture
def bucket(gcs_client):
    bucket = gcs_client.bucket(BUCKET)
    if not bucket.exists():
        bucket = gcs_client.create_bucket(BUCKET)
    for blob in list(bucket.list_blobs()):
        blob.delete()
    return bucket


def gcs_account(api, gcs_emulator, secret, *, bucket=BUCKET, name="acme-gcs"):
    account = CloudAccountFactory(
        provider="gcp",
        name=name,
        settings={
            "source": "gcs",
            "bucket": bucket,
            "prefix": "focus/",
            "project": "acme-billing",
            "endpoints": {"storage": gcs_emulator, "compute": api.url},
        },
    )
    credential = Credential(account=account, kind="service_account")
    credential.set_secret(secret)
    credential.save()
    return account


def total(rows) -> Decimal:
    return sum((Decimal(r["BilledCost"]) for r in rows), Decimal(0))


def test_focus_files_load_per_period_skip_unchanged_and_replace_the_changed_period(
    api, gcs_emulator, bucket, service_account
):
    # given: September in a CSV.gz and a Parquet file, October in a CSV
    header, september = focus_rows("2024-09")
    _, october = focus_rows("2024-10")
    bucket.blob("focus/2024-09/part-00001.csv.gz").upload_from_string(csv_bytes(header, september[:500], gz=True))
    bucket.blob("focus/2024-09/part-00002.parquet").upload_from_string(parquet_bytes(header, september[500:]))
    bucket.blob("focus/2024-10/part-00001.csv").upload_from_string(csv_bytes(header, october))
    bucket.blob("focus/README.txt").upload_from_string(b"not an export")
    account = gcs_account(api, gcs_emulator, service_account[0])
    # when
    first = account_cost_sync(account_id=account.id)
    # then
    assert first.periods == {"2024-09": 999, "2024-10": 1}
    assert first.files == [
        "focus/2024-09/part-00001.csv.gz",
        "focus/2024-09/part-00002.parquet",
        "focus/2024-10/part-00001.csv",
    ]
    lines = CostLineItem.objects.filter(account=account)
    assert lines.aggregate(t=Sum("billed_cost"))["t"] == total(september) + total(october)

    # when: nothing changed
    again = account_cost_sync(account_id=account.id)
    # then
    assert again.unchanged_periods == ["2024-09", "2024-10"]
    assert again.rows_loaded == 0 and lines.count() == 1000

    # when: October is re-delivered (a new generation) with another cost
    october[0]["BilledCost"] = "123.45"
    bucket.blob("focus/2024-10/part-00001.csv").upload_from_string(csv_bytes(header, october))
    changed = account_cost_sync(account_id=account.id)
    # then
    assert changed.unchanged_periods == ["2024-09"]
    assert changed.periods == {"2024-10": 1} and changed.rows_replaced == 1
    assert lines.aggregate(t=Sum("billed_cost"))["t"] == total(september) + Decimal("123.45")


def test_a_truncated_object_fails_naming_it_and_keeps_the_data(api, gcs_emulator, bucket, service_account):
    # given
    header, october = focus_rows("2024-10")
    bucket.blob("focus/2024-10/part-00001.csv").upload_from_string(csv_bytes(header, october))
    account = gcs_account(api, gcs_emulator, service_account[0])
    account_cost_sync(account_id=account.id)
    fingerprint = ExportState.objects.get(account=account).fingerprint
    # when: a second part arrives cut off mid-stream, and a bad decimal in the first
    october[0]["BilledCost"] = "12,5"
    bucket.blob("focus/2024-10/part-00001.csv").upload_from_string(csv_bytes(header, october))
    with pytest.raises(FocusRulesError) as failure:
        account_cost_sync(account_id=account.id)
    # then
    assert str(failure.value).startswith(
        "focus/2024-10/part-00001.csv row 1 column BilledCost: '12,5' is not a decimal"
    )
    assert CostLineItem.objects.filter(account=account).count() == 1
    assert ExportState.objects.get(account=account).fingerprint == fingerprint

    october[0]["BilledCost"] = "1"
    bucket.blob("focus/2024-10/part-00001.csv").upload_from_string(csv_bytes(header, october))
    bucket.blob("focus/2024-10/part-00002.csv.gz").upload_from_string(csv_bytes(header, october * 50, gz=True)[:300])
    with pytest.raises(FocusRulesError, match=r"focus/2024-10/part-00002\.csv\.gz row \d+: the file is truncated"):
        account_cost_sync(account_id=account.id)
    assert CostLineItem.objects.filter(account=account).count() == 1


def test_missing_bucket_and_a_file_without_period_are_named(api, gcs_emulator, bucket, service_account):
    missing = gcs_account(api, gcs_emulator, service_account[0], bucket="no-such-bucket", name="missing")
    with pytest.raises(PermanentError, match=r"bucket gs://no-such-bucket not found"):
        account_cost_sync(account_id=missing.id)
    header, october = focus_rows("2024-10")
    bucket.blob("focus/latest.csv").upload_from_string(csv_bytes(header, october))
    account = gcs_account(api, gcs_emulator, service_account[0])
    with pytest.raises(PermanentError, match=r"gs://acme-billing-exports/focus/latest\.csv: no billing period"):
        account_cost_sync(account_id=account.id)


def test_an_unreachable_storage_endpoint_is_transient(api, service_account):
    from .conftest import free_port

    account = gcs_account(api, f"http://127.0.0.1:{free_port()}", service_account[0], name="unreachable")
    with pytest.raises(TransientError, match=r"listing gs://acme-billing-exports/focus/: network error"):
        account_cost_sync(account_id=account.id)

"""GET /api/v1/costs/export: stored cost lines streamed as a FOCUS 1.2 CSV or Parquet file."""

import csv
import io
from datetime import UTC, datetime

import pytest

from tests.factories import CloudAccountFactory, CostLineItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def account():
    account = CloudAccountFactory(name="export-me")
    for day in (3, 4):
        CostLineItemFactory(
            account=account,
            charge_period_start=datetime(2024, 9, day, tzinfo=UTC),
            charge_period_end=datetime(2024, 9, day + 1, tzinfo=UTC),
        )
    CostLineItemFactory(
        account=account,
        billing_period_start=datetime(2024, 10, 1, tzinfo=UTC),
        billing_period_end=datetime(2024, 11, 1, tzinfo=UTC),
        charge_period_start=datetime(2024, 10, 2, tzinfo=UTC),
        charge_period_end=datetime(2024, 10, 3, tzinfo=UTC),
    )
    return account


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_csv_export_of_one_period(viewer_client, account):
    # when
    response = viewer_client.get("/api/v1/costs/export?account=export-me&start=2024-09&end=2024-09&format=csv")
    # then
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="focus-export-me-2024-09-2024-09.csv"'
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    assert len(rows) == 2
    assert {"BilledCost", "BillingPeriodStart", "ChargeCategory", "ServiceName", "Tags"} <= set(rows[0])


def test_parquet_export_of_every_period(viewer_client, account):
    # given
    import pyarrow.parquet as pq

    # when
    response = viewer_client.get("/api/v1/costs/export?account=export-me&format=parquet")
    # then
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(body(response)))
    assert table.num_rows == 3
    assert "BilledCost" in table.column_names


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("account=nobody", "account"),
        ("account=export-me&start=2024-9", "start"),
        ("account=export-me&end=24-09", "end"),
        ("account=export-me&start=2024-10&end=2024-09", "end"),
        ("account=export-me&format=xlsx", "format"),
        ("account=export-me&fromat=csv", "fromat"),
        ("start=2024-09", "account"),
    ],
)
def test_bad_export_query_is_400(viewer_client, account, query, field):
    # when
    response = viewer_client.get(f"/api/v1/costs/export?{query}")
    # then
    assert response.status_code == 400
    assert field in response.json()

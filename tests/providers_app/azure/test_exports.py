"""Azure Cost Management exports in Azurite: run layout, newest complete run per period, mapping to FOCUS 1.2,
change detection and bad input — through the real azure-storage-blob client and the real ingestion path."""

from __future__ import annotations

import gzip
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db.models import Count, Sum

from costs_app.models import CostLineItem
from costs_app.services.ingest import FocusRulesError, account_cost_sync
from finops.errors import PermanentError
from providers_app.connectors.azure import AzureExportSource, connection_check
from providers_app.models import ExportState
from providers_app.services.accounts import account_create
from tests.providers_app.azure.conftest import AZURITE_KEY, account_settings, credential
from tests.providers_app.azure.exports import (
    ACTUAL_HEADER,
    FOCUS_HEADER,
    RESERVATION,
    SUB_A,
    actual_rows,
    csv_bytes,
    focus_rows,
    period_folder,
    upload_run,
)

pytestmark = pytest.mark.django_db
PREFIX = "finops/daily-actual/"


@pytest.fixture
def container(azurite):
    client = azurite.new_container()
    yield client
    client.delete_container()


def make_account(fake_azure, azurite, azure_tls, container, name="contoso", **extra):
    return account_create(
        provider="azure",
        name=name,
        settings=account_settings(fake_azure, azurite, azure_tls, container.container_name, **extra),
        credentials=credential(),
        credential_kind="service_principal",
    )


def billed_by_period(rows_by_period: dict[str, list[dict]]) -> dict[str, Decimal]:
    """Independent of the code: the sum of costInBillingCurrency as written in the files."""
    return {
        p: sum((Decimal(r["costInBillingCurrency"]) for r in rows), Decimal(0)) for p, rows in rows_by_period.items()
    }


def stored_billed(account) -> dict[str, Decimal]:
    out = defaultdict(Decimal)
    for row in (
        CostLineItem.objects.filter(account=account).values("billing_period_start").annotate(s=Sum("billed_cost"))
    ):
        out[row["billing_period_start"].strftime("%Y-%m")] += row["s"]
    return dict(out)


def test_actual_export_multi_period_newest_complete_run_wins_and_unchanged_periods_skip(
    fake_azure, azurite, azure_tls, container
):
    # given: two periods; September has an older run, a newer complete run and a newest run still being written
    account = make_account(fake_azure, azurite, azure_tls, container)
    now = datetime(2024, 10, 5, 6, tzinfo=UTC)
    old = actual_rows("2024-09", 40, cost="9.99")
    september = actual_rows("2024-09", 60)
    october = actual_rows("2024-10", 25)
    upload_run(container, prefix=PREFIX, period="2024-09", parts=[csv_bytes(old)], submitted=now - timedelta(days=3))
    upload_run(
        container,
        prefix=PREFIX,
        period="2024-09",
        parts=[csv_bytes(september[:35], gz=True), csv_bytes(september[35:], gz=True)],
        submitted=now - timedelta(days=1),
        suffix=".csv.gz",
    )
    container.upload_blob(f"{PREFIX}{period_folder('2024-09')}/run-in-progress/part_0_0001.csv", csv_bytes(old))
    upload_run(container, prefix=PREFIX, period="2024-10", parts=[csv_bytes(october)], submitted=now)

    # when
    first = account_cost_sync(account_id=account.id)

    # then: the newer complete September run, both files; October; sums equal the files' own
    assert first.periods == {"2024-09": 60, "2024-10": 25}
    assert first.warnings == [
        f"export run skipped, not complete: {PREFIX}{period_folder('2024-09')}/run-in-progress: no manifest.json yet"
    ]
    assert stored_billed(account) == billed_by_period({"2024-09": september, "2024-10": october})
    assert first.unchanged_periods == []
    assert ExportState.objects.filter(account=account).count() == 2

    again = account_cost_sync(account_id=account.id)
    assert again.rows_loaded == 0
    assert again.unchanged_periods == ["2024-09", "2024-10"]
    assert CostLineItem.objects.filter(account=account).count() == 85

    # when: a new daily run of October (month to date grew), September untouched
    october2 = actual_rows("2024-10", 31, cost="2")
    upload_run(
        container, prefix=PREFIX, period="2024-10", parts=[csv_bytes(october2)], submitted=now + timedelta(days=1)
    )
    changed = account_cost_sync(account_id=account.id)

    # then: exactly October replaced
    assert changed.unchanged_periods == ["2024-09"]
    assert changed.periods == {"2024-10": 31}
    assert changed.rows_replaced == 25
    assert stored_billed(account) == billed_by_period({"2024-09": september, "2024-10": october2})


def test_actual_mapping_rules_on_sample_values(fake_azure, azurite, azure_tls, container):
    # given
    account = make_account(fake_azure, azurite, azure_tls, container)
    rows = actual_rows("2024-02", 60)
    upload_run(container, prefix=PREFIX, period="2024-02", parts=[csv_bytes(rows)])

    # when
    result = account_cost_sync(account_id=account.id)

    # then
    assert result.periods == {"2024-02": 60}
    lines = CostLineItem.objects.filter(account=account).order_by("source_row")
    first = lines[0]  # row 1: on-demand VM usage in sub B, "EU West", JSON tags
    assert first.provider_name == "Microsoft" and first.invoice_issuer_name == "Microsoft"
    assert first.billing_period_start == datetime(2024, 2, 1, tzinfo=UTC)
    assert first.billing_period_end == datetime(2024, 3, 1, tzinfo=UTC)  # 02/29/2024 inclusive -> exclusive
    assert first.charge_period_start == datetime(2024, 2, 1, tzinfo=UTC)
    assert first.charge_period_end == datetime(2024, 2, 2, tzinfo=UTC)
    assert first.charge_category == "Usage" and first.pricing_category == "Standard"
    assert first.charge_frequency == "Usage-Based"
    assert first.region_id == "westeurope" and first.region_name == "EU West"
    assert first.resource_id == (
        "/subscriptions/9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d/resourcegroups/rg-web"
        "/providers/microsoft.compute/virtualmachines/web-0"
    )
    assert first.resource_name == "web-0" and first.resource_type == "microsoft.compute/virtualmachines"
    assert first.sub_account_id == "/subscriptions/9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    assert first.service_category == "Compute" and first.service_name == "Virtual Machines"
    assert first.tags == {"env": "prod", "CostCenter": "1234"}
    assert first.list_cost == Decimal("0.212") * Decimal("6.4")  # PayGPrice x quantity
    assert first.contracted_cost == Decimal("0.192") * Decimal("6.4")
    assert first.effective_cost == first.billed_cost == Decimal("1.2345")
    assert first.billing_currency == "EUR" and first.pricing_currency == "USD"
    second = lines[1]  # brace-less tags
    assert second.tags == {"env": "prod", "team": "web"}
    covered = lines[3]  # reservation-covered usage in the actual dataset: billed 0
    assert (covered.pricing_category, covered.commitment_discount_status) == ("Committed", "Used")
    assert covered.commitment_discount_id == RESERVATION.lower()
    assert (covered.commitment_discount_type, covered.commitment_discount_category) == ("Reservation", "Usage")
    assert covered.billed_cost == 0
    spot = lines[5]
    assert spot.pricing_category == "Dynamic"
    storage = lines[6]
    assert storage.list_cost == Decimal("0.7") and storage.service_category == "Storage" and storage.tags is None
    purchase = lines[8]
    assert (purchase.charge_category, purchase.charge_frequency) == ("Purchase", "Recurring")
    assert purchase.effective_cost == purchase.billed_cost  # not amortized in the actual dataset
    refund = lines[9]
    assert (refund.charge_category, refund.charge_class) == ("Purchase", "Correction")
    assert refund.billed_cost == Decimal("-1.2345")
    tax = lines[47]
    assert tax.charge_category == "Tax" and tax.pricing_category is None and tax.list_cost == tax.billed_cost
    by_sub = dict(CostLineItem.objects.filter(account=account).values_list("sub_account_id").annotate(n=Count("id")))
    assert by_sub == {f"/subscriptions/{SUB_A}": 40, "/subscriptions/9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d": 20}


def test_amortized_mapping_moves_commitment_cost_from_purchase_to_usage(fake_azure, azurite, azure_tls, container):
    # given: the amortized dataset (manifest type AmortizedCost)
    account = make_account(fake_azure, azurite, azure_tls, container, export_name="monthly-amortized")
    rows = actual_rows("2024-03", 40, amortized=True)
    upload_run(
        container,
        prefix="finops/monthly-amortized/",
        period="2024-03",
        parts=[csv_bytes(rows)],
        dataset="AmortizedCost",
    )

    # when
    account_cost_sync(account_id=account.id)

    # then: EffectiveCost is the amortized cost except the purchase; BilledCost is 0 where the commitment paid
    total = sum(Decimal(r["costInBillingCurrency"]) for r in rows)
    purchases = sum(Decimal(r["costInBillingCurrency"]) for r in rows if r["chargeType"] == "Purchase")
    prepaid = sum(
        Decimal(r["costInBillingCurrency"])
        for r in rows
        if (r["chargeType"] == "Usage" and r["pricingModel"] == "Reservation") or r["chargeType"] == "UnusedReservation"
    )
    assert purchases > 0 and prepaid > 0
    sums = CostLineItem.objects.filter(account=account).aggregate(b=Sum("billed_cost"), e=Sum("effective_cost"))
    assert sums["e"] == total - purchases
    assert sums["b"] == total - prepaid
    unused = CostLineItem.objects.get(account=account, source_row=5)
    assert (unused.charge_category, unused.commitment_discount_status, unused.billed_cost) == ("Usage", "Unused", 0)


def test_focus_export_csv_and_parquet_with_x_columns(fake_azure, azurite, azure_tls, container):
    # given: Azure's FOCUS export, one period as gzip CSV, one as Parquet
    account = make_account(fake_azure, azurite, azure_tls, container, export_name="focus")
    may, june = focus_rows("2024-05", 30), focus_rows("2024-06", 12, cost="1.75")
    upload_run(container, prefix="finops/focus/", period="2024-05", parts=[csv_bytes(may, FOCUS_HEADER, gz=True)],
               dataset="FocusCost", suffix=".csv.gz")  # fmt: skip
    table = pa.table({name: pa.array([row.get(name) or None for row in june], pa.string()) for name in FOCUS_HEADER})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    upload_run(container, prefix="finops/focus/", period="2024-06", parts=[sink.getvalue().to_pybytes()],
               dataset="FocusCost", suffix=".snappy.parquet")  # fmt: skip

    # when
    result = account_cost_sync(account_id=account.id)

    # then
    assert result.periods == {"2024-05": 30, "2024-06": 12}
    assert stored_billed(account) == {"2024-05": Decimal("2.5") * 30, "2024-06": Decimal("1.75") * 12}
    line = CostLineItem.objects.filter(account=account).first()
    assert line.sub_account_id == f"/subscriptions/{SUB_A}" and line.billing_account_type == "Billing Profile"


def test_older_single_file_runs_use_last_modified_and_settings_dataset(fake_azure, azurite, azure_tls, container):
    # given: the older layout: one file per run directly in the period folder, no manifest
    account = make_account(fake_azure, azurite, azure_tls, container, dataset="ActualCost")
    folder = f"{PREFIX}{period_folder('2024-01')}"
    container.upload_blob(f"{folder}/daily-actual_0a1b.csv", csv_bytes(actual_rows("2024-01", 10, cost="5")))
    newest = actual_rows("2024-01", 14)
    time.sleep(1.1)  # Last-Modified has one-second resolution
    container.upload_blob(f"{folder}/daily-actual_0a0a.csv", csv_bytes(newest))

    # when
    result = account_cost_sync(account_id=account.id)

    # then: the last-modified (newest) file alone
    assert result.periods == {"2024-01": 14}
    assert result.files == [f"{folder}/daily-actual_0a0a.csv"]
    assert stored_billed(account) == billed_by_period({"2024-01": newest})


def test_bad_value_fails_naming_blob_row_and_column_and_keeps_the_data(fake_azure, azurite, azure_tls, container):
    # given: a loaded period
    account = make_account(fake_azure, azurite, azure_tls, container)
    rows = actual_rows("2024-04", 20)
    upload_run(
        container, prefix=PREFIX, period="2024-04", parts=[csv_bytes(rows)], submitted=datetime(2024, 5, 1, tzinfo=UTC)
    )
    account_cost_sync(account_id=account.id)
    before = stored_billed(account)

    # when: a newer run with a malformed cost on row 7 and a bad date on row 9
    bad = actual_rows("2024-04", 20)
    bad[6]["costInBillingCurrency"] = "1,25"
    bad[8]["date"] = "31/04/2024"
    names = upload_run(
        container, prefix=PREFIX, period="2024-04", parts=[csv_bytes(bad)], submitted=datetime(2024, 5, 2, tzinfo=UTC)
    )
    with pytest.raises(FocusRulesError) as failure:
        account_cost_sync(account_id=account.id)

    # then
    message = str(failure.value)
    assert message.startswith(f"{names[0]} row 7 column BilledCost: '1,25' is not a decimal"), message
    assert "row 9 column ChargePeriodStart: '31/04/2024'" in message
    assert stored_billed(account) == before

    # when: a run whose file lacks a column the mapping needs
    header = [h for h in csv_bytes(rows).decode("utf-8-sig").splitlines()[0].split(",") if h != "billingCurrency"]
    names = upload_run(
        container,
        prefix=PREFIX,
        period="2024-04",
        parts=[csv_bytes(rows, header)],
        submitted=datetime(2024, 5, 3, tzinfo=UTC),
    )
    with pytest.raises(FocusRulesError) as failure:
        account_cost_sync(account_id=account.id)
    assert f"{names[0]} column billingcurrency: is needed for the Azure Cost Management: actual cost mapping" in str(
        failure.value
    )

    # when: a truncated gzip part
    data = gzip.compress(csv_bytes(rows))
    names = upload_run(container, prefix=PREFIX, period="2024-04", parts=[data[: len(data) // 2]], suffix=".csv.gz",
                       submitted=datetime(2024, 5, 4, tzinfo=UTC))  # fmt: skip
    with pytest.raises(FocusRulesError) as failure:
        account_cost_sync(account_id=account.id)
    assert str(failure.value).startswith(f"{names[0]}"), str(failure.value)
    assert "truncated or unreadable" in str(failure.value)
    assert stored_billed(account) == before


def test_connection_check_names_missing_container_and_missing_export(fake_azure, azurite, azure_tls, container):
    fake_azure.state.resources[SUB_A] = {}
    account = make_account(fake_azure, azurite, azure_tls, container, subscription_ids=[SUB_A])
    account.settings["container"] = "no-such-container"
    report = connection_check(account)
    assert not report.ok
    assert report.checks[-1].name == "export container no-such-container"
    assert "the container does not exist" in report.checks[-1].detail

    account.settings["container"] = container.container_name
    report = connection_check(account)
    assert report.checks[-1].name == f"export {container.container_name}/finops/daily-actual/"
    assert report.checks[-1].detail.startswith(f"no export yet under {container.container_name}/finops/daily-actual/")

    upload_run(container, prefix=PREFIX, period="2024-04", parts=[csv_bytes(actual_rows("2024-04", 3))], manifest=False)
    report = connection_check(account)
    assert "incomplete runs" in report.checks[-1].detail and "no manifest.json yet" in report.checks[-1].detail

    upload_run(container, prefix=PREFIX, period="2024-04", parts=[csv_bytes(actual_rows("2024-04", 3))])
    report = connection_check(account)
    assert report.ok, report.summary()
    assert report.checks[-1].detail.startswith("1 billing period(s), newest 2024-04")


def test_source_lists_deliveries_with_etags(fake_azure, azurite, azure_tls, container):
    account = make_account(fake_azure, azurite, azure_tls, container)
    names = upload_run(container, prefix=PREFIX, period="2024-07", parts=[csv_bytes(actual_rows("2024-07", 3))] * 2)
    [delivery] = AzureExportSource(account).deliveries()
    assert delivery.period == "2024-07" and [f.key for f in delivery.files] == names
    assert all(f.etag and f.size for f in delivery.files)
    assert delivery.mapping.name == "Azure Cost Management: actual cost"


def test_storage_with_the_service_principal_token_or_a_sas(fake_azure, azurite, azurite_tls, azure_tls):
    # given: HTTPS Azurite that checks bearer tokens; the credential has no storage key
    secure = azurite_tls.new_container()
    rows = actual_rows("2024-06", 12)
    upload_run(secure, prefix=PREFIX, period="2024-06", parts=[csv_bytes(rows)])
    fake_azure.state.resources[SUB_A] = {}
    settings = account_settings(fake_azure, azurite_tls, azure_tls, secure.container_name, subscription_ids=[SUB_A])
    secret = credential()
    del secret["storage_account_key"]
    account = account_create(provider="azure", name="token-storage", settings=settings, credentials=secret)

    # when / then: the export is read with a storage-audience token from the same service principal
    assert connection_check(account).ok, connection_check(account).summary()
    assert account_cost_sync(account_id=account.id).periods == {"2024-06": 12}
    assert "https://storage.azure.com/.default" in " ".join(fake_azure.state.scopes)

    # given: a SAS with read + list on a plain-HTTP Azurite container, and no service principal access to storage
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    plain = azurite.new_container()
    upload_run(plain, prefix=PREFIX, period="2024-07", parts=[csv_bytes(actual_rows("2024-07", 5))])
    sas = generate_container_sas(
        "devstoreaccount1",
        plain.container_name,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    secret = credential(storage_sas_token=sas)
    del secret["storage_account_key"]
    sas_account = account_create(
        provider="azure",
        name="sas-storage",
        settings=account_settings(fake_azure, azurite, azure_tls, plain.container_name, subscription_ids=[SUB_A]),
        credentials=secret,
    )
    assert account_cost_sync(account_id=sas_account.id).periods == {"2024-07": 5}
    # a SAS without list permission: the listing is refused, permanently, naming the fix
    read_only = generate_container_sas(
        "devstoreaccount1", plain.container_name, account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True), expiry=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    sas_account.credential.set_secret({**secret, "storage_sas_token": read_only})
    sas_account.credential.save()
    with pytest.raises(PermanentError, match="listing blobs under .*permission denied on the storage container"):
        account_cost_sync(account_id=sas_account.id, force=True)
    secure.delete_container()
    plain.delete_container()


def test_actual_cost_parquet_with_typed_columns_and_one_period_sync(fake_azure, azurite, azure_tls, container):
    # given: a Parquet actual-cost export whose cost/quantity columns are doubles and dates are timestamps
    # (how Azure's Parquet exports type them), next to a CSV period
    account = make_account(fake_azure, azurite, azure_tls, container)
    rows = actual_rows("2024-11", 20)
    columns = {}
    for name in ACTUAL_HEADER:
        values = [row[name] or None for row in rows]
        if name in ("costInBillingCurrency", "quantity", "PayGPrice", "unitPrice", "effectivePrice"):
            columns[name] = pa.array([float(v) if v else None for v in values], pa.float64())
        elif name in ("date", "billingPeriodStartDate", "billingPeriodEndDate"):
            columns[name] = pa.array(
                [datetime.strptime(v, "%m/%d/%Y").replace(tzinfo=UTC) if v else None for v in values],
                pa.timestamp("us", tz="UTC"),
            )
        else:
            columns[name] = pa.array(values, pa.string())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    upload_run(container, prefix=PREFIX, period="2024-11", parts=[sink.getvalue().to_pybytes()], suffix=".parquet")
    upload_run(container, prefix=PREFIX, period="2024-10", parts=[csv_bytes(actual_rows("2024-10", 7))])

    # when: only November is asked for
    result = account_cost_sync(account_id=account.id, billing_period="2024-11")

    # then
    assert result.periods == {"2024-11": 20}
    assert stored_billed(account) == billed_by_period({"2024-11": rows})
    first = CostLineItem.objects.filter(account=account).order_by("source_row").first()
    assert first.charge_period_start == datetime(2024, 11, 1, tzinfo=UTC)
    assert first.billing_period_end == datetime(2024, 12, 1, tzinfo=UTC)
    assert first.list_cost == Decimal("0.212") * Decimal("6.4")

# ruff: noqa: E501  (rows of export data read best one row per line)
"""Cost Management export files as Azure writes them, and the blob layout of export runs, for the tests.

The column set is the current "Cost and usage details" (MCA) schema, with Azure's own mixed casing
(`ResourceId`, `PayGPrice`, `SubscriptionId`, `costInBillingCurrency`, ...), MM/DD/YYYY dates, and both tag
spellings Azure writes (a JSON object, and the brace-less `"k": "v","k2": "v2"`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import uuid
from datetime import UTC, date, datetime, timedelta

SUB_A = "2f4e1c3a-7b8d-4e9f-a0b1-c2d3e4f5a6b7"
SUB_B = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
RESERVATION = "/providers/Microsoft.Capacity/reservationOrders/4c6e1a2b-0000-4000-8000-000000000001/reservations/7d1f0e2c-0000-4000-8000-000000000002"

ACTUAL_HEADER = [
    "invoiceId", "previousInvoiceId", "billingAccountId", "billingAccountName", "billingProfileId",
    "billingProfileName", "invoiceSectionId", "invoiceSectionName", "partnerName", "resellerName", "resellerMpnId",
    "costCenter", "billingPeriodEndDate", "billingPeriodStartDate", "servicePeriodEndDate", "servicePeriodStartDate",
    "date", "serviceFamily", "productOrderId", "productOrderName", "consumedService", "meterId", "meterName",
    "meterCategory", "meterSubCategory", "meterRegion", "ProductId", "ProductName", "SubscriptionId",
    "subscriptionName", "publisherType", "publisherId", "publisherName", "resourceGroupName", "ResourceId",
    "resourceLocation", "location", "effectivePrice", "quantity", "unitOfMeasure", "chargeType", "billingCurrency",
    "pricingCurrency", "costInBillingCurrency", "costInPricingCurrency", "costInUsd", "paygCostInBillingCurrency",
    "paygCostInUsd", "exchangeRatePricingToBilling", "exchangeRateDate", "isAzureCreditEligible", "serviceInfo1",
    "serviceInfo2", "additionalInfo", "tags", "PayGPrice", "frequency", "term", "reservationId", "reservationName",
    "pricingModel", "unitPrice", "costAllocationRuleName", "benefitId", "benefitName", "provider",
]  # fmt: skip


def vm_id(subscription: str, name: str, group: str = "rg-web") -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"


def _us(day: date) -> str:
    return f"{day.month:02d}/{day.day:02d}/{day.year}"


def actual_rows(period: str, n: int, *, cost: str = "1.2345", amortized: bool = False) -> list[dict]:
    """n rows of one billing period: mostly on-demand VM usage, plus a reservation purchase, reservation-covered
    usage, a spot VM, storage, a refund and a tax row, so every derived rule has something to do."""
    year, month = int(period[:4]), int(period[5:])
    start = date(year, month, 1)
    end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    rows = []
    for i in range(n):
        day = start + timedelta(days=i % end.day)
        sub = SUB_A if i % 3 else SUB_B
        base = dict.fromkeys(ACTUAL_HEADER, "")
        base.update(
            {
                "invoiceId": f"G{year}{month:02d}001",
                "billingAccountId": "a1b2c3d4-0000-4000-8000-000000000000:e5f6a7b8-0000-4000-8000-000000000000_2019-05-31",
                "billingAccountName": "Contoso Ltd",
                "billingProfileName": "Contoso Billing",
                "billingPeriodStartDate": _us(start),
                "billingPeriodEndDate": _us(end),
                "date": _us(day),
                "serviceFamily": "Compute",
                "consumedService": "Microsoft.Compute",
                "meterId": "cd2d7ca5-2fb8-4d87-a4c1-fd4ad9b3ac3d",
                "meterName": "D4s v3",
                "meterCategory": "Virtual Machines",
                "meterSubCategory": "Dsv3 Series",
                "meterRegion": "EU West",
                "ProductId": "DZH318Z0BQ4L",
                "ProductName": "Virtual Machines Dsv3 Series - D4s v3 - EU West",
                "SubscriptionId": sub,
                "subscriptionName": "Production" if sub == SUB_A else "Staging",
                "publisherType": "Azure",
                "publisherName": "Microsoft",
                "resourceGroupName": "rg-web",
                "ResourceId": vm_id(sub, f"web-{i % 4}").replace(
                    "resourceGroups", "resourcegroups" if i % 2 else "resourceGroups"
                ),
                "resourceLocation": "westeurope" if i % 2 else "EU West",
                "location": "EU West",
                "effectivePrice": "0.192",
                "quantity": "6.4",
                "unitOfMeasure": "1 Hour",
                "chargeType": "Usage",
                "billingCurrency": "EUR",
                "pricingCurrency": "USD",
                "costInBillingCurrency": cost,
                "paygCostInBillingCurrency": "",
                "PayGPrice": "0.212",
                "frequency": "UsageBased",
                "pricingModel": "OnDemand",
                "unitPrice": "0.192",
                "tags": '"env": "prod","team": "web"' if i % 2 else '{"env": "prod", "CostCenter": "1234"}',
                "provider": "Azure",
            }
        )
        kind = i % 10
        if kind == 3:  # usage covered by a reservation: 0 in actual, the amortized share in amortized
            base.update(
                {"pricingModel": "Reservation", "reservationId": RESERVATION, "reservationName": "vm-ri-d4s",
                 "benefitId": RESERVATION, "benefitName": "vm-ri-d4s", "costInBillingCurrency": cost if amortized else "0",
                 "unitPrice": "0.11"}
            )  # fmt: skip
        elif kind == 5:  # a spot VM
            base.update({"pricingModel": "Spot", "meterName": "D4s v3 Spot", "PayGPrice": "0.05"})
        elif kind == 6:  # storage, with the pay-as-you-go cost given directly
            base.update(
                {"meterCategory": "Storage", "meterSubCategory": "Premium SSD Managed Disks", "meterName": "P10 LRS Disk",
                 "unitOfMeasure": "1/Month", "quantity": "0.0333", "paygCostInBillingCurrency": "0.7",
                 "ResourceId": f"/subscriptions/{sub}/resourceGroups/rg-web/providers/Microsoft.Compute/disks/data-{i % 4}",
                 "tags": ""}
            )  # fmt: skip
        elif kind == 8 and i % 20 == 8:  # the reservation's purchase (monthly payment)
            base.update(
                {"chargeType": "Purchase", "frequency": "Recurring", "pricingModel": "Reservation",
                 "reservationId": RESERVATION, "benefitId": RESERVATION, "benefitName": "vm-ri-d4s",
                 "reservationName": "vm-ri-d4s", "ResourceId": "", "resourceLocation": "", "quantity": "1",
                 "unitOfMeasure": "1 Hour", "PayGPrice": "", "unitPrice": "", "tags": "", "meterCategory": "Virtual Machines"}
            )  # fmt: skip
        elif kind == 9 and i % 30 == 9:
            base.update(
                {"chargeType": "Refund", "costInBillingCurrency": "-" + cost.lstrip("-"), "frequency": "OneTime"}
            )
        elif kind == 7 and i % 40 == 7:
            base.update(
                {"chargeType": "Tax", "pricingModel": "", "ResourceId": "", "resourceLocation": "", "PayGPrice": "",
                 "unitPrice": "", "quantity": "", "unitOfMeasure": "", "meterCategory": "", "tags": ""}
            )  # fmt: skip
        if amortized and kind == 4 and i % 20 == 4:
            base.update({"chargeType": "UnusedReservation", "pricingModel": "Reservation",
                         "reservationId": RESERVATION, "benefitId": RESERVATION, "ResourceId": ""})  # fmt: skip
        rows.append(base)
    return rows


def csv_bytes(rows: list[dict], header: list[str] | None = None, *, gz: bool = False) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header or ACTUAL_HEADER, quoting=csv.QUOTE_MINIMAL, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode("utf-8-sig")  # Azure writes a BOM
    return gzip.compress(data) if gz else data


FOCUS_HEADER = [
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName", "BillingAccountType",
    "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "CommitmentDiscountCategory",
    "CommitmentDiscountId", "CommitmentDiscountName", "CommitmentDiscountStatus", "CommitmentDiscountType",
    "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice", "EffectiveCost",
    "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "RegionId", "RegionName", "ResourceId", "ResourceName", "ResourceType",
    "ServiceCategory", "ServiceName", "SkuId", "SkuPriceId", "SubAccountId", "SubAccountName", "SubAccountType",
    "Tags", "x_AccountName", "x_BilledCostInUsd", "x_CostCenter", "x_ResourceGroupName", "x_SkuMeterCategory",
]  # fmt: skip


def focus_rows(period: str, n: int, *, cost: str = "2.5") -> list[dict]:
    """Rows of Azure's FOCUS export (FOCUS 1.0 columns plus x_ extensions)."""
    year, month = int(period[:4]), int(period[5:])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    rows = []
    for i in range(n):
        day = start + timedelta(days=i % 28)
        sub = SUB_A
        rid = vm_id(sub, f"api-{i % 3}").lower()
        rows.append(
            {
                "BilledCost": cost, "EffectiveCost": cost, "ListCost": "3.0", "ContractedCost": cost,
                "BillingAccountId": "/providers/Microsoft.Billing/billingAccounts/a1b2c3d4",
                "BillingAccountName": "Contoso Ltd", "BillingAccountType": "Billing Profile", "BillingCurrency": "USD",
                "BillingPeriodStart": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "BillingPeriodEnd": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ChargeCategory": "Usage", "ChargeClass": "", "ChargeDescription": "D2s v3",
                "ChargeFrequency": "Usage-Based",
                "ChargePeriodStart": day.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ChargePeriodEnd": (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ConsumedQuantity": "24", "ConsumedUnit": "Hours", "ContractedUnitPrice": "0.1", "ListUnitPrice": "0.125",
                "InvoiceIssuerName": "Microsoft", "PricingCategory": "Standard", "PricingQuantity": "24",
                "PricingUnit": "Hours", "ProviderName": "Microsoft", "PublisherName": "Microsoft",
                "RegionId": "westeurope", "RegionName": "West Europe", "ResourceId": rid, "ResourceName": f"api-{i % 3}",
                "ResourceType": "Virtual machine", "ServiceCategory": "Compute", "ServiceName": "Virtual Machines",
                "SkuId": "DZH318Z0BQ4L", "SkuPriceId": "DZH318Z0BQ4L_0001", "SubAccountId": f"/subscriptions/{sub}",
                "SubAccountName": "Production", "SubAccountType": "Subscription",
                "Tags": '{"env":"prod"}', "x_AccountName": "ops", "x_BilledCostInUsd": cost, "x_CostCenter": "",
                "x_ResourceGroupName": "rg-api", "x_SkuMeterCategory": "Virtual Machines",
            }
        )  # fmt: skip
    return rows


def period_folder(period: str) -> str:
    year, month = int(period[:4]), int(period[5:])
    start = date(year, month, 1)
    end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return f"{start:%Y%m%d}-{end:%Y%m%d}"


def upload_run(
    container,
    *,
    prefix: str,
    period: str,
    parts: list[bytes],
    dataset: str = "ActualCost",
    submitted: datetime | None = None,
    suffix: str = ".csv",
    manifest: bool = True,
    run_id: str | None = None,
) -> list[str]:
    """A partitioned run: <prefix><period folder>/<run id>/part_0_000N<suffix> + manifest.json (written last,
    as Cost Management does). Returns the part blob names."""
    run_id = run_id or str(uuid.uuid4())
    folder = f"{prefix}{period_folder(period)}/{run_id}"
    names = []
    for index, data in enumerate(parts, start=1):
        name = f"{folder}/part_0_{index:04d}{suffix}"
        container.upload_blob(name, data, overwrite=True)
        names.append(name)
    if manifest:
        submitted = submitted or datetime.now(UTC)
        body = {
            "manifestVersion": "2024-04-01",
            "byteCount": sum(len(p) for p in parts),
            "blobCount": len(parts),
            "dataRowCount": 0,
            "exportConfig": {
                "exportName": prefix.rstrip("/").rsplit("/", 1)[-1],
                "resourceId": f"/subscriptions/{SUB_A}/providers/Microsoft.CostManagement/exports/x",
                "dataVersion": "2023-12-01-preview" if dataset != "FocusCost" else "1.0r2",
                "apiVersion": "2023-07-01-preview",
                "type": dataset,
                "timeFrame": "MonthToDate",
                "granularity": "Daily",
            },
            "deliveryConfig": {
                "partitionData": True,
                "dataOverwriteBehavior": "CreateNewReport",
                "fileFormat": "Parquet" if suffix.endswith("parquet") else "Csv",
                "compressionMode": "gzip" if suffix.endswith(".gz") else "None",
                "containerUri": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z",
                "rootFolderPath": prefix.rstrip("/"),
            },
            "runInfo": {
                "executionType": "Scheduled",
                "submittedTime": submitted.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
                "runId": run_id,
                "startDate": f"{period}-01T00:00:00",
                "endDate": f"{period}-28T00:00:00",
            },
            "blobs": [
                {"blobName": name, "byteCount": len(data), "dataRowCount": 0}
                for name, data in zip(names, parts, strict=True)
            ],
        }
        container.upload_blob(f"{folder}/manifest.json", json.dumps(body).encode(), overwrite=True)
    return names

"""CUR 2.0, legacy CUR and FOCUS export files as AWS delivers them, written into moto's S3 by the tests.

The rows cover every line item type the mapping treats differently (on-demand, Spot, Savings Plan and RI
covered usage, the negation and fee lines, tax, credit, a refund of an earlier month), resource ids of
each inventory kind, and tags. `expected_*` compute the figures a test compares with, from these rows with
Decimal, independently of the connector.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import defaultdict
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

ACCOUNT = "123456789012"
LINKED = "210987654321"
SP_ARN = "arn:aws:savingsplans::123456789012:savingsplan/0a1b2c3d-1111-2222-3333-444455556666"
RI_ARN = "arn:aws:ec2:us-east-1:123456789012:reserved-instances/9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff"
RDS_ARN = "arn:aws:rds:us-east-1:123456789012:db:orders"

CUR2_COLUMNS = [
    "identity_line_item_id", "identity_time_interval", "bill_bill_type", "bill_billing_entity",
    "bill_billing_period_end_date", "bill_billing_period_start_date", "bill_invoice_id", "bill_invoicing_entity",
    "bill_payer_account_id", "bill_payer_account_name", "line_item_availability_zone", "line_item_blended_cost",
    "line_item_currency_code", "line_item_legal_entity", "line_item_line_item_description",
    "line_item_line_item_type", "line_item_net_unblended_cost", "line_item_operation", "line_item_product_code",
    "line_item_resource_id", "line_item_unblended_cost", "line_item_unblended_rate", "line_item_usage_account_id",
    "line_item_usage_account_name", "line_item_usage_amount", "line_item_usage_end_date",
    "line_item_usage_start_date", "line_item_usage_type", "pricing_public_on_demand_cost",
    "pricing_public_on_demand_rate", "pricing_rate_code", "pricing_term", "pricing_unit", "product",
    "product_location", "product_product_family", "product_region_code", "product_servicecode", "product_sku",
    "reservation_effective_cost", "reservation_reservation_a_r_n",
    "reservation_unused_amortized_upfront_fee_for_billing_period", "reservation_unused_recurring_fee",
    "resource_tags", "savings_plan_savings_plan_a_r_n", "savings_plan_savings_plan_effective_cost",
    "savings_plan_total_commitment_to_date", "savings_plan_used_commitment",
]  # fmt: skip
MONEY = [
    "line_item_blended_cost", "line_item_net_unblended_cost", "line_item_unblended_cost", "line_item_unblended_rate",
    "line_item_usage_amount", "pricing_public_on_demand_cost", "pricing_public_on_demand_rate",
    "reservation_effective_cost", "reservation_unused_amortized_upfront_fee_for_billing_period",
    "reservation_unused_recurring_fee", "savings_plan_savings_plan_effective_cost",
    "savings_plan_total_commitment_to_date", "savings_plan_used_commitment",
]  # fmt: skip
DATES = [
    "bill_billing_period_end_date", "bill_billing_period_start_date", "line_item_usage_end_date",
    "line_item_usage_start_date",
]  # fmt: skip

EC2 = {"product_name": "Amazon Elastic Compute Cloud", "servicename": "Amazon Elastic Compute Cloud"}
PRODUCTS = {
    "AmazonEC2": EC2,
    "AmazonS3": {"product_name": "Amazon Simple Storage Service"},
    "AmazonRDS": {"product_name": "Amazon Relational Database Service"},
}


def next_month(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12}-{month % 12 + 1:02d}"


def previous_month(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year - (month == 1)}-{(month - 2) % 12 + 1:02d}"


def cost(i: int, scale: str = "1") -> str:
    return str(Decimal(f"{(i % 7) + 1}.{(i * 37) % 1000:03d}25") * Decimal(scale))


def cur2_rows(period: str, n: int, scale: str = "1") -> list[dict]:
    """n usage-ish rows cycling through ten kinds, plus the period's RIFee, SP recurring fee and SP negation."""
    start, end = f"{period}-01T00:00:00Z", f"{next_month(period)}-01T00:00:00Z"
    rows = []
    for i in range(n):
        day = i % 28 + 1
        usage_start = f"{period}-{day:02d}T00:00:00Z"
        usage_end = f"{period}-{day:02d}T01:00:00Z"
        c = cost(i, scale)
        row = dict.fromkeys(CUR2_COLUMNS, "")
        row.update(
            identity_line_item_id=f"li-{period}-{i}",
            identity_time_interval=f"{usage_start}/{usage_end}",
            bill_bill_type="Anniversary",
            bill_billing_entity="AWS",
            bill_billing_period_start_date=start,
            bill_billing_period_end_date=end,
            bill_invoice_id="",
            bill_invoicing_entity="Amazon Web Services, Inc.",
            bill_payer_account_id=ACCOUNT,
            bill_payer_account_name="acme-payer",
            line_item_currency_code="USD",
            line_item_legal_entity="Amazon Web Services, Inc.",
            line_item_usage_account_id=LINKED if i % 2 else ACCOUNT,
            line_item_usage_account_name="acme-dev" if i % 2 else "acme-payer",
            line_item_usage_start_date=usage_start,
            line_item_usage_end_date=usage_end,
            line_item_unblended_cost=c,
            line_item_blended_cost=c,
            line_item_usage_amount="1",
            line_item_unblended_rate=c,
            product_region_code="us-east-1",
            product_location="US East (N. Virginia)",
            line_item_availability_zone="us-east-1a",
        )
        kind = i % 10
        code, product_family, resource, unit = "AmazonEC2", "Compute Instance", f"i-{i:017x}", "Hrs"
        line_type, term, usage_type, description = "Usage", "OnDemand", "BoxUsage:m5.large", "m5.large on demand"
        tags = {"user_team": "core" if i % 3 else "data", "user_Name": f"web-{i % 4}"}
        if kind == 1:
            product_family, resource, unit, usage_type = "Storage", f"vol-{i:017x}", "GB-Mo", "EBS:VolumeUsage.gp3"
            description = "gp3 storage"
        elif kind == 2:
            line_type, term, description = "SavingsPlanCoveredUsage", "", "covered by a Compute Savings Plan"
            row.update(
                savings_plan_savings_plan_a_r_n=SP_ARN,
                savings_plan_savings_plan_effective_cost=str(Decimal(c) * Decimal("0.7")),
            )
        elif kind == 3:
            line_type, term, description = "DiscountedUsage", "Reserved", "covered by a reserved instance"
            row.update(reservation_reservation_a_r_n=RI_ARN, reservation_effective_cost=str(Decimal(c) / 2))
        elif kind == 4:
            code, product_family, resource, unit = "AmazonS3", "Storage", "acme-logs", "GB-Mo"
            usage_type, description = "TimedStorage-ByteHrs", "S3 standard storage"
            row["line_item_availability_zone"] = ""
        elif kind == 5:
            line_type, term, code, resource, unit, usage_type = "Tax", "", "AmazonEC2", "", "", ""
            description, tags = "Tax for product code AmazonEC2", {}
            row.update(product_region_code="", line_item_availability_zone="", line_item_usage_amount="")
        elif kind == 6:
            line_type, term, resource, usage_type, tags = "Credit", "", "", "", {}
            description = "AWS promotional credit"
            row.update(line_item_unblended_cost="-" + c, line_item_blended_cost="-" + c, line_item_usage_amount="")
        elif kind == 7:
            line_type, term, description = "Refund", "", "refund of last month's overcharge"
            prev = previous_month(period)
            row.update(
                bill_bill_type="Refund",
                line_item_usage_start_date=f"{prev}-15T00:00:00Z",
                line_item_usage_end_date=f"{prev}-16T00:00:00Z",
                line_item_unblended_cost="-" + c,
                line_item_blended_cost="-" + c,
            )
        elif kind == 8:
            code, product_family, resource, usage_type = "AmazonRDS", "Database Instance", RDS_ARN, "InstanceUsage"
            description = "db.m5.large PostgreSQL"
        elif kind == 9:
            term, usage_type, description = "", "SpotUsage:m5.large", "m5.large spot"
        row.update(
            line_item_line_item_type=line_type,
            pricing_term=term,
            line_item_usage_type=usage_type,
            line_item_line_item_description=description,
            line_item_product_code=code,
            product_servicecode=code,
            product_product_family=product_family if resource else "",
            line_item_resource_id=resource,
            pricing_unit=unit,
            product=json.dumps(PRODUCTS.get(code, {})),
            resource_tags=json.dumps(tags) if tags else "",
            product_sku=f"SKU{kind}ABC",
            pricing_rate_code=f"SKU{kind}ABC.JRTCKXETXF.6YS6EN2CT7",
        )
        if line_type in ("Usage", "DiscountedUsage", "SavingsPlanCoveredUsage") and kind != 9:
            row.update(pricing_public_on_demand_cost=str(Decimal(c) * Decimal("1.2")), pricing_public_on_demand_rate=c)
        rows.append(row)
    fees = [
        ("RIFee", {"reservation_reservation_a_r_n": RI_ARN, "line_item_unblended_cost": "72.000",
                   "reservation_unused_amortized_upfront_fee_for_billing_period": "3.5",
                   "reservation_unused_recurring_fee": "1.25"}),
        ("SavingsPlanRecurringFee", {"savings_plan_savings_plan_a_r_n": SP_ARN, "line_item_unblended_cost": "100",
                                     "savings_plan_total_commitment_to_date": "100",
                                     "savings_plan_used_commitment": "87.5"}),
        ("SavingsPlanNegation", {"savings_plan_savings_plan_a_r_n": SP_ARN, "line_item_unblended_cost": "-3.25"}),
    ]  # fmt: skip
    for j, (line_type, extra) in enumerate(fees):
        row = dict(rows[0])
        row.update(dict.fromkeys(["pricing_public_on_demand_cost", "pricing_public_on_demand_rate", "resource_tags",
                                  "line_item_resource_id", "pricing_term"], ""))  # fmt: skip
        row.update(
            identity_line_item_id=f"li-{period}-fee-{j}",
            line_item_line_item_type=line_type,
            line_item_line_item_description=f"{line_type} line",
            line_item_blended_cost=extra["line_item_unblended_cost"],
            line_item_usage_start_date=f"{period}-01T00:00:00Z",
            line_item_usage_end_date=f"{next_month(period)}-01T00:00:00Z",
            **extra,
        )
        rows.append(row)
    return rows


# --- what the tests expect, straight from the rows ---


def expected(rows: list[dict]) -> dict:
    """Per period: rows, BilledCost sum, EffectiveCost sum (the documented amortisation rules), ListCost sum."""
    out: dict[str, dict] = defaultdict(
        lambda: {"rows": 0, "billed": Decimal(0), "effective": Decimal(0), "list": Decimal(0)}
    )

    def d(v):
        return Decimal(v) if v not in ("", None) else Decimal(0)

    for row in rows:
        figures = out[row["bill_billing_period_start_date"][:7]]
        figures["rows"] += 1
        unblended = d(row["line_item_unblended_cost"])
        figures["billed"] += unblended
        kind = row["line_item_line_item_type"]
        if kind == "SavingsPlanCoveredUsage":
            effective = d(row["savings_plan_savings_plan_effective_cost"])
        elif kind == "DiscountedUsage":
            effective = d(row["reservation_effective_cost"])
        elif kind in ("SavingsPlanNegation", "SavingsPlanUpfrontFee"):
            effective = Decimal(0)
        elif kind == "RIFee":
            effective = d(row["reservation_unused_amortized_upfront_fee_for_billing_period"]) + d(
                row["reservation_unused_recurring_fee"]
            )
        elif kind == "SavingsPlanRecurringFee":
            effective = d(row["savings_plan_total_commitment_to_date"]) - d(row["savings_plan_used_commitment"])
        else:
            effective = d(row["line_item_net_unblended_cost"] or row["line_item_unblended_cost"])
        figures["effective"] += effective
        figures["list"] += d(row["pricing_public_on_demand_cost"] or row["line_item_unblended_cost"])
    return dict(out)


# --- file formats ---


def csv_gz(rows: list[dict], columns: list[str] | None = None, rename=None) -> bytes:
    columns = columns or list(rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([rename(c) if rename else c for c in columns])
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return gzip.compress(buffer.getvalue().encode())


def cur2_parquet(rows: list[dict]) -> bytes:
    """As AWS writes CUR 2.0 Parquet: money as double, dates as timestamps, product/resource_tags as maps."""
    arrays = {}
    for column in CUR2_COLUMNS:
        values = [row[column] for row in rows]
        if column in MONEY:
            arrays[column] = pa.array([float(v) if v else None for v in values], pa.float64())
        elif column in DATES:
            arrays[column] = pa.array(values, pa.string()).cast(pa.timestamp("ms", tz="UTC"))
        elif column in ("product", "resource_tags"):
            maps = [list(json.loads(v).items()) if v else None for v in values]
            arrays[column] = pa.array(maps, pa.map_(pa.string(), pa.string()))
        else:
            arrays[column] = pa.array([v or None for v in values], pa.string())
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays), buffer)
    return buffer.getvalue()


LEGACY_NAMES = {
    "line_item_line_item_type": "lineItem/LineItemType",
    "savings_plan_savings_plan_a_r_n": "savingsPlan/SavingsPlanARN",
    "reservation_reservation_a_r_n": "reservation/ReservationARN",
    "pricing_public_on_demand_cost": "pricing/publicOnDemandCost",
    "pricing_public_on_demand_rate": "pricing/publicOnDemandRate",
    "product_region_code": "product/regionCode",
    "bill_payer_account_id": "bill/PayerAccountId",
}


def legacy_header(column: str) -> str:
    """CUR 2.0 name -> the legacy CUR CSV header ("line_item_usage_start_date" -> "lineItem/UsageStartDate")."""
    if column in LEGACY_NAMES:
        return LEGACY_NAMES[column]
    for category, legacy in (("line_item_", "lineItem/"), ("bill_", "bill/"), ("pricing_", "pricing/"),
                             ("product_", "product/"), ("identity_", "identity/"), ("reservation_", "reservation/"),
                             ("savings_plan_", "savingsPlan/")):  # fmt: skip
        if column.startswith(category):
            rest = column[len(category) :]
            return legacy + "".join(part.capitalize() for part in rest.split("_"))
    return column


def legacy_rows(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The same rows in legacy CUR CSV form: slash headers, tags as resourceTags/user:* columns, no maps."""
    keys = sorted({k for row in rows if row["resource_tags"] for k in json.loads(row["resource_tags"])})
    out = []
    for row in rows:
        new = {legacy_header(c): row[c] for c in CUR2_COLUMNS if c not in ("product", "resource_tags")}
        new["product/ProductName"] = json.loads(row["product"]).get("product_name", "") if row["product"] else ""
        tags = json.loads(row["resource_tags"]) if row["resource_tags"] else {}
        for key in keys:
            new["resourceTags/user:" + key.removeprefix("user_")] = tags.get(key, "")
        out.append(new)
    return list(out[0]), out


FOCUS_COLUMNS = [
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName", "BillingAccountType",
    "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription",
    "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName",
    "ListCost", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "RegionId", "ResourceId",
    "ServiceCategory", "ServiceName", "SubAccountId", "Tags", "x_Operation", "x_UsageType", "x_ServiceCode",
]  # fmt: skip


def focus_rows(period: str, n: int) -> list[dict]:
    """AWS's FOCUS 1.2 export: FOCUS columns plus its x_ columns."""
    start, end = f"{period}-01T00:00:00Z", f"{next_month(period)}-01T00:00:00Z"
    rows = []
    for i in range(n):
        day = f"{period}-{i % 28 + 1:02d}"
        c = cost(i)
        rows.append(
            {
                "AvailabilityZone": "us-east-1a", "BilledCost": c, "BillingAccountId": ACCOUNT,
                "BillingAccountName": "acme-payer", "BillingAccountType": "Billing Account", "BillingCurrency": "USD",
                "BillingPeriodEnd": end, "BillingPeriodStart": start, "ChargeCategory": "Usage", "ChargeClass": "",
                "ChargeDescription": "m5.large on demand", "ChargeFrequency": "Usage-Based",
                "ChargePeriodEnd": f"{day}T01:00:00Z", "ChargePeriodStart": f"{day}T00:00:00Z", "ContractedCost": c,
                "EffectiveCost": c, "InvoiceIssuerName": "Amazon Web Services, Inc.", "ListCost": c,
                "PricingQuantity": "1", "PricingUnit": "Hours", "ProviderName": "AWS",
                "PublisherName": "Amazon Web Services, Inc.", "RegionId": "us-east-1", "ResourceId": f"i-{i:017x}",
                "ServiceCategory": "Compute", "ServiceName": "Amazon Elastic Compute Cloud", "SubAccountId": LINKED,
                "Tags": json.dumps({"team": "core"}), "x_Operation": "RunInstances", "x_UsageType": "BoxUsage:m5.large",
                "x_ServiceCode": "AmazonEC2",
            }
        )  # fmt: skip
    return rows


# --- deliveries ---


def put_data_export(s3, bucket: str, prefix: str, name: str, period: str, files: dict[str, bytes], *,
                    version: str = "", columns: list[str] | None = None) -> str:  # fmt: skip
    """A Data Exports delivery: data files, then the manifest listing them (as s3:// URIs). Returns the manifest key."""
    root = f"{prefix}/{name}" if prefix else name
    sub = f"{version}/" if version else ""
    keys = []
    for filename, body in files.items():
        key = f"{root}/data/BILLING_PERIOD={period}/{sub}{filename}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        keys.append(f"s3://{bucket}/{key}")
    manifest = {
        "version": "1.0",
        "exportName": name,
        "billingPeriod": period,
        "bucket": bucket,
        "dataFiles": keys,
        "columns": [{"name": c, "type": "string"} for c in (columns or [])],
    }
    manifest_key = f"{root}/metadata/BILLING_PERIOD={period}/{sub}{name}-Manifest.json"
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    return manifest_key


def put_legacy_cur(s3, bucket: str, prefix: str, report: str, period: str, assembly: str,
                   files: dict[str, bytes], *, period_manifest: bool = True) -> str:  # fmt: skip
    """A legacy CUR delivery: <report>/<yyyymmdd-yyyymmdd>/<assemblyId>/ files + manifests (reportKeys)."""
    folder = f"{period.replace('-', '')}01-{next_month(period).replace('-', '')}01"
    root = f"{prefix}/{report}/{folder}" if prefix else f"{report}/{folder}"
    keys = []
    for filename, body in files.items():
        key = f"{root}/{assembly}/{filename}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        keys.append(key)
    manifest = json.dumps(
        {
            "assemblyId": assembly,
            "reportKeys": keys,
            "billingPeriod": {"start": f"{period.replace('-', '')}01T000000.000Z"},
            "bucket": bucket,
            "compression": "GZIP",
            "contentType": "text/csv",
        }
    ).encode()
    s3.put_object(Bucket=bucket, Key=f"{root}/{assembly}/{report}-Manifest.json", Body=manifest)
    if period_manifest:
        s3.put_object(Bucket=bucket, Key=f"{root}/{report}-Manifest.json", Body=manifest)
    return f"{root}/{report}-Manifest.json"

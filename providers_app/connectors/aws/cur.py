"""AWS cost exports in S3: CUR 2.0 / Data Exports and legacy CUR deliveries, and their mapping to FOCUS 1.2.

Two S3 layouts are understood (settings.layout "auto" tries Data Exports first, then legacy CUR):

- Data Exports (CUR 2.0 or FOCUS 1.2 tables):
  `<prefix>/<export>/metadata/BILLING_PERIOD=YYYY-MM/[<version>/]<export>-Manifest.json` lists its files in
  `dataFiles` (s3:// URIs under `<prefix>/<export>/data/BILLING_PERIOD=YYYY-MM/...`). With "create new export
  version" there are several manifests per period: the newest (LastModified) wins.
- Legacy CUR: `<prefix>/<report>/<yyyymmdd>-<yyyymmdd>/<report>-Manifest.json` (the period's current delivery)
  and `<prefix>/<report>/<yyyymmdd>-<yyyymmdd>/<assemblyId>/<report>-Manifest.json` (each delivery). The
  period-level manifest wins; without one, the newest assembly's. Its files are in `reportKeys`.

A delivery's fingerprint is made of its data files' keys, ETags and sizes (from one ListObjectsV2 of the
export's folder), so a period whose files have not changed is not downloaded again.

The CUR columns are read under their CUR 2.0 / Athena names (`line_item_usage_start_date`); legacy CSV headers
(`lineItem/UsageStartDate`, `resourceTags/user:Name`) are renamed to those. FOCUS exports are read as FOCUS
(AWS's `x_` columns are ignored).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from finops.errors import PermanentError, TransientError

from ..exports import Delivery, ExportCostSource, ExportFile
from ..mapping import ColumnMapping, Rule, as_text, coalesce, lookup
from .session import AwsContext, aws_errors, bucket_arn

NULL = pa.scalar(None, pa.string())


# --- column names ---


def cur_column_name(name: str) -> str:
    """A legacy CUR CSV header ("lineItem/UsageStartDate") as its CUR 2.0 / Athena name ("line_item_usage_start_date").

    The rule is AWS's own for Athena/Parquet: an underscore before every capital, lower case, and any run of
    other characters as one underscore ("savingsPlan/SavingsPlanARN" -> "savings_plan_savings_plan_a_r_n").
    Names without a "/" are already in that form.
    """
    if "/" not in name:
        return name
    text = re.sub(r"([A-Z])", r"_\1", name).lower()
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def tag_key(column: str) -> str | None:
    """The tag key a CUR tag column holds, or None: "resourceTags/user:Name" -> "Name",
    "resource_tags_user_cost_center" -> "cost_center" (Parquet and CUR 2.0 names lost the key's case),
    "resourceTags/aws:createdBy" -> "aws:createdBy"."""
    if column.startswith("resourceTags/"):
        key = column[len("resourceTags/") :]
        return key[5:] if key.startswith("user:") else key
    if column.startswith("resource_tags_"):
        key = column[len("resource_tags_") :]
        return key[5:] if key.startswith("user_") else key
    return None


def _blank_to_null(arr: pa.Array) -> pa.Array:
    arr = as_text(arr)
    return pc.if_else(pc.equal(arr, ""), NULL, arr)


def _map_text(arr: pa.Array) -> pa.Array:
    """A map<string,string> column (Parquet) as one text per row, "k\x1ev\x1dk\x1ev…" (null for a null map), built
    with Arrow kernels: Python then parses only the distinct texts. JSON text (CSV) is passed on as it is."""
    arr = _combined(arr)
    if not pa.types.is_map(arr.type):
        return as_text(arr)
    entries = pc.binary_join_element_wise(
        pc.fill_null(as_text(arr.keys), ""), pc.fill_null(as_text(arr.items), ""), "\x1e"
    )
    rows = pa.ListArray.from_arrays(arr.offsets, entries, mask=arr.is_null())
    return pc.binary_join(rows, "\x1d")


def _parse_map_text(text: str) -> dict:
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return dict(entry.split("\x1e", 1) for entry in text.split("\x1d") if "\x1e" in entry)


def _map_get(arr: pa.Array, key: str) -> pa.Array:
    if pa.types.is_map(arr.type):
        return as_text(pc.map_lookup(arr, query_key=key, occurrence="first"))
    if pa.types.is_null(arr.type) or pc.all(pc.is_null(arr)).as_py() is not False:
        return pa.nulls(len(arr), pa.string())
    text = as_text(arr)
    uniques = pc.unique(text).to_pylist()
    found = {}
    for value in uniques:
        if not value:
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            continue
        if isinstance(parsed, dict) and parsed.get(key) not in (None, ""):
            found[value] = str(parsed[key])
    if not found:
        return pa.nulls(len(arr), pa.string())
    keys = pa.array(list(found), pa.string())
    return pc.take(pa.array(list(found.values()), pa.string()), pc.index_in(text, value_set=keys))


def _is_in(arr: pa.Array, values: Sequence[str]) -> pa.Array:
    return pc.fill_null(pc.is_in(as_text(arr), pa.array(list(values), pa.string())), False)


def _decimal(text: str | None) -> Decimal:
    if not text:
        return Decimal(0)
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal("NaN")


def _fmt(value: Decimal) -> str:
    return "NaN-not-a-decimal" if value.is_nan() else format(value, "f")


# --- the CUR -> FOCUS 1.2 rules ---

USAGE_TYPES = ("Usage", "DiscountedUsage", "SavingsPlanCoveredUsage", "SavingsPlanNegation")
CHARGE_CATEGORY = {
    "Usage": "Usage",
    "DiscountedUsage": "Usage",
    "SavingsPlanCoveredUsage": "Usage",
    "SavingsPlanNegation": "Usage",
    "SavingsPlanUpfrontFee": "Purchase",
    "SavingsPlanRecurringFee": "Purchase",
    "RIFee": "Purchase",
    "Fee": "Purchase",
    "Tax": "Tax",
    "Credit": "Credit",
    "Refund": "Credit",
    "BundledDiscount": "Credit",
    "Discount": "Credit",
    "EdpDiscount": "Credit",
    "PrivateRateDiscount": "Credit",
    "DistributorDiscount": "Credit",
    "SppDiscount": "Credit",
}
CHARGE_FREQUENCY = {
    "SavingsPlanUpfrontFee": "One-Time",
    "Fee": "One-Time",
    "Credit": "One-Time",
    "Refund": "One-Time",
    "SavingsPlanRecurringFee": "Recurring",
    "RIFee": "Recurring",
}
# line_item_product_code -> FOCUS ServiceCategory (the services most bills have; anything else is "Other").
SERVICE_CATEGORY = {
    "AmazonEC2": "Compute", "AWSLambda": "Compute", "AmazonECS": "Compute", "AmazonEKS": "Compute",
    "AWSBatch": "Compute", "AmazonLightsail": "Compute", "AWSOutposts": "Compute", "AmazonAppStream": "Compute",
    "AmazonS3": "Storage", "AmazonEFS": "Storage", "AmazonFSx": "Storage", "AWSBackup": "Storage",
    "AmazonGlacier": "Storage", "AmazonS3GlacierDeepArchive": "Storage", "AWSStorageGateway": "Storage",
    "AmazonRDS": "Databases", "AmazonDynamoDB": "Databases", "AmazonElastiCache": "Databases",
    "AmazonDocDB": "Databases", "AmazonNeptune": "Databases", "AmazonRedshift": "Analytics",
    "AmazonAthena": "Analytics", "AWSGlue": "Analytics", "AmazonKinesis": "Analytics",
    "AmazonKinesisFirehose": "Analytics", "AmazonES": "Analytics", "AmazonOpenSearchService": "Analytics",
    "ElasticMapReduce": "Analytics", "AmazonQuickSight": "Analytics", "AmazonMSK": "Analytics",
    "AmazonVPC": "Networking", "AWSELB": "Networking", "AmazonCloudFront": "Networking",
    "AmazonRoute53": "Networking", "AWSDirectConnect": "Networking", "AWSGlobalAccelerator": "Networking",
    "AWSDataTransfer": "Networking", "AmazonApiGateway": "Web",
    "AmazonCloudWatch": "Management and Governance", "AWSCloudTrail": "Management and Governance",
    "AWSConfig": "Management and Governance", "AWSSystemsManager": "Management and Governance",
    "AWSCostExplorer": "Management and Governance", "AWSCloudFormation": "Management and Governance",
    "AWSKMS": "Security", "AWSSecretsManager": "Security", "AWSWAF": "Security", "AmazonGuardDuty": "Security",
    "AWSSecurityHub": "Security", "AWSShield": "Security", "AmazonInspector": "Security",
    "AmazonCognito": "Identity", "AWSDirectoryService": "Identity",
    "AmazonSNS": "Integration", "AWSQueueService": "Integration", "AmazonSQS": "Integration",
    "AWSEvents": "Integration", "AmazonMQ": "Integration", "AWSStepFunctions": "Integration",
    "AmazonSageMaker": "AI and Machine Learning", "AmazonBedrock": "AI and Machine Learning",
    "AmazonRekognition": "AI and Machine Learning", "AmazonTextract": "AI and Machine Learning",
    "comprehend": "AI and Machine Learning", "transcribe": "AI and Machine Learning",
    "AWSIoT": "Internet of Things", "AWSCodeBuild": "Developer Tools", "AWSCodePipeline": "Developer Tools",
    "AWSCodeArtifact": "Developer Tools", "AmazonECR": "Compute",
    "AmazonWorkSpaces": "Business Applications", "AmazonConnect": "Business Applications",
    "AmazonSES": "Business Applications", "AWSMigrationHub": "Migration", "AWSDMS": "Migration",
    "AmazonChime": "Business Applications", "AWSSupportBusiness": "Other", "AWSSupportEnterprise": "Other",
}  # fmt: skip
# line_item_product_code -> the product name AWS bills it under, when the file has no product name.
SERVICE_NAME = {
    "AmazonEC2": "Amazon Elastic Compute Cloud",
    "AmazonS3": "Amazon Simple Storage Service",
    "AmazonRDS": "Amazon Relational Database Service",
    "AWSELB": "Elastic Load Balancing",
    "AmazonVPC": "Amazon Virtual Private Cloud",
    "AmazonCloudWatch": "AmazonCloudWatch",
    "AWSLambda": "AWS Lambda",
    "AmazonDynamoDB": "Amazon DynamoDB",
    "AWSDataTransfer": "AWS Data Transfer",
}


def charge_class(line_type, bill_type, usage_start, period_start) -> pa.Array:
    refund = pc.or_(_is_in(line_type, ["Refund"]), _is_in(bill_type, ["Refund"]))
    if pa.types.is_timestamp(usage_start.type) and pa.types.is_timestamp(period_start.type):
        earlier = pc.fill_null(pc.less(usage_start, period_start.cast(usage_start.type)), False)
    else:  # ISO text: the dates compare as text
        start = pc.utf8_slice_codeunits(as_text(usage_start), 0, 10)
        period = pc.utf8_slice_codeunits(as_text(period_start), 0, 10)
        earlier = pc.fill_null(pc.less(start, period), False)
    return pc.if_else(pc.or_(refund, earlier), pa.scalar("Correction"), NULL)


def effective_cost(
    line_type, unblended, net_unblended, sp_effective, ri_effective, reservation_arn,
    ri_unused_upfront, ri_unused_recurring, sp_total_commitment, sp_used_commitment,
) -> pa.Array:  # fmt: skip
    base = coalesce(net_unblended, unblended)
    out = pc.if_else(_is_in(line_type, ["SavingsPlanCoveredUsage"]), coalesce(sp_effective, base), base)
    out = pc.if_else(_is_in(line_type, ["DiscountedUsage"]), coalesce(ri_effective, base), out)
    zero = pc.or_(
        _is_in(line_type, ["SavingsPlanNegation", "SavingsPlanUpfrontFee"]),
        pc.and_(_is_in(line_type, ["Fee"]), pc.is_valid(_blank_to_null(reservation_arn))),
    )
    out = pc.if_else(zero, pa.scalar("0"), out)
    # The unused part of a commitment: the only cost its fee lines keep once usage carries the amortised rest.
    for kind, first, second, sign in (
        ("RIFee", ri_unused_upfront, ri_unused_recurring, 1),
        ("SavingsPlanRecurringFee", sp_total_commitment, sp_used_commitment, -1),
    ):
        mask = _is_in(line_type, [kind])
        count = pc.sum(mask).as_py() or 0
        if not count:
            continue
        a = as_text(first).filter(mask).to_pylist()
        b = as_text(second).filter(mask).to_pylist()
        values = [_fmt(_decimal(x) + sign * _decimal(y)) for x, y in zip(a, b, strict=True)]
        out = pc.replace_with_mask(out, mask, pa.array(values, pa.string()))
    return out


def commitment_category(sp_arn, ri_arn) -> pa.Array:
    sp, ri = pc.is_valid(_blank_to_null(sp_arn)), pc.is_valid(_blank_to_null(ri_arn))
    return pc.if_else(sp, pa.scalar("Spend"), pc.if_else(ri, pa.scalar("Usage"), NULL))


def commitment_type(sp_arn, ri_arn) -> pa.Array:
    sp, ri = pc.is_valid(_blank_to_null(sp_arn)), pc.is_valid(_blank_to_null(ri_arn))
    return pc.if_else(sp, pa.scalar("Savings Plan"), pc.if_else(ri, pa.scalar("Reserved Instance"), NULL))


def commitment_status(line_type, sp_arn, ri_arn) -> pa.Array:
    used = _is_in(line_type, ["SavingsPlanCoveredUsage", "DiscountedUsage"])
    return pc.if_else(used, pa.scalar("Used"), NULL)


def usage_only(value, line_type) -> pa.Array:
    return pc.if_else(_is_in(line_type, USAGE_TYPES), _blank_to_null(value), NULL)


def pricing_category(line_type, pricing_term, usage_type, reservation_arn) -> pa.Array:
    term = pc.utf8_lower(_blank_to_null(pricing_term))
    usage = _is_in(line_type, ["Usage", "DiscountedUsage", "SavingsPlanCoveredUsage", "SavingsPlanNegation"])
    fee = _is_in(line_type, ["Fee"])
    commitment_line = _is_in(
        line_type,
        ["SavingsPlanCoveredUsage", "DiscountedUsage", "SavingsPlanNegation", "SavingsPlanUpfrontFee",
         "SavingsPlanRecurringFee", "RIFee"],
    )  # fmt: skip
    committed = pc.or_(
        pc.or_(commitment_line, pc.and_(usage, _is_in(term, ["reserved", "savings plan"]))),
        pc.and_(fee, pc.is_valid(_blank_to_null(reservation_arn))),
    )
    spot = pc.or_(_is_in(term, ["spot"]), pc.fill_null(pc.match_substring(as_text(usage_type), "SpotUsage"), False))
    standard = pc.or_(pc.and_(usage, _is_in(term, ["ondemand", "on demand", "on-demand"])), fee)
    out = pc.if_else(usage, pa.scalar("Other"), NULL)
    out = pc.if_else(standard, pa.scalar("Standard"), out)
    out = pc.if_else(pc.and_(usage, spot), pa.scalar("Dynamic"), out)
    return pc.if_else(committed, pa.scalar("Committed"), out)


def service_name(product_name, product, product_code) -> pa.Array:
    code = _blank_to_null(product_code)
    known = lookup(SERVICE_NAME, keep_unknown=True)(code)
    return coalesce(product_name, _map_get(product, "product_name"), known)


def with_default(default: str):
    def derive(*arrays: pa.Array) -> pa.Array:
        return pc.fill_null(coalesce(*arrays), default)

    return derive


def list_cost(public_cost, unblended) -> pa.Array:
    return coalesce(public_cost, unblended)


CUR_RULES = [
    Rule("AvailabilityZone", "line_item_availability_zone"),
    Rule("BilledCost", "line_item_unblended_cost", required=True),
    Rule("BillingAccountId", "bill_payer_account_id", required=True),
    Rule("BillingAccountName", "bill_payer_account_name"),
    Rule("BillingCurrency", "line_item_currency_code", required=True),
    Rule("BillingPeriodEnd", "bill_billing_period_end_date", required=True),
    Rule("BillingPeriodStart", "bill_billing_period_start_date", required=True),
    Rule(
        "ChargeCategory",
        "line_item_line_item_type",
        fn=lookup(CHARGE_CATEGORY, default="Adjustment"),
        how="Usage, DiscountedUsage, SavingsPlanCoveredUsage, SavingsPlanNegation -> Usage; SavingsPlanUpfrontFee, "
        "SavingsPlanRecurringFee, RIFee, Fee -> Purchase; Tax -> Tax; Credit, Refund and the discounts (Bundled-, "
        "Edp-, PrivateRate-, Distributor-, Spp-Discount, Discount) -> Credit; any other type -> Adjustment",
        required=True,
    ),
    Rule(
        "ChargeClass",
        ("line_item_line_item_type", "bill_bill_type", "line_item_usage_start_date", "bill_billing_period_start_date"),
        fn=charge_class,
        how="Correction for a Refund line (line item type or bill type) and for a charge whose usage started "
        "before the billing period (a correction of an earlier period); else empty",
    ),
    Rule("ChargeDescription", "line_item_line_item_description"),
    Rule(
        "ChargeFrequency",
        "line_item_line_item_type",
        fn=lookup(CHARGE_FREQUENCY, default="Usage-Based"),
        how="SavingsPlanUpfrontFee, Fee, Credit, Refund -> One-Time; SavingsPlanRecurringFee, RIFee -> Recurring; "
        "every other type -> Usage-Based",
    ),
    Rule("ChargePeriodEnd", "line_item_usage_end_date", required=True),
    Rule("ChargePeriodStart", "line_item_usage_start_date", required=True),
    Rule(
        "CommitmentDiscountCategory",
        ("savings_plan_savings_plan_a_r_n", "reservation_reservation_a_r_n"),
        fn=commitment_category,
        how="Spend when the line has a Savings Plan ARN, Usage when it has a reservation ARN, else empty",
    ),
    Rule(
        "CommitmentDiscountId",
        ("savings_plan_savings_plan_a_r_n", "reservation_reservation_a_r_n"),
        fn=coalesce,
        how="the Savings Plan ARN, else the reservation ARN",
    ),
    Rule(
        "CommitmentDiscountStatus",
        ("line_item_line_item_type", "savings_plan_savings_plan_a_r_n", "reservation_reservation_a_r_n"),
        fn=commitment_status,
        how="Used on SavingsPlanCoveredUsage and DiscountedUsage lines; empty elsewhere (the unused part of a "
        "commitment is the EffectiveCost of its RIFee / SavingsPlanRecurringFee lines)",
    ),
    Rule(
        "CommitmentDiscountType",
        ("savings_plan_savings_plan_a_r_n", "reservation_reservation_a_r_n"),
        fn=commitment_type,
        how="Savings Plan / Reserved Instance, from which ARN the line has",
    ),
    Rule(
        "ConsumedQuantity",
        ("line_item_usage_amount", "line_item_line_item_type"),
        fn=usage_only,
        how="line_item_usage_amount on usage lines (Usage, DiscountedUsage, SavingsPlanCoveredUsage, "
        "SavingsPlanNegation); empty on fees, taxes and credits",
    ),
    Rule(
        "ConsumedUnit",
        ("pricing_unit", "line_item_line_item_type"),
        fn=usage_only,
        how="pricing_unit on usage lines, as for ConsumedQuantity",
    ),
    Rule(
        "ContractedCost",
        ("line_item_net_unblended_cost", "line_item_unblended_cost"),
        fn=coalesce,
        how="line_item_net_unblended_cost (after negotiated discounts) where the export has it, else "
        "line_item_unblended_cost",
    ),
    Rule(
        "ContractedUnitPrice",
        ("line_item_net_unblended_rate", "line_item_unblended_rate"),
        fn=coalesce,
        how="line_item_net_unblended_rate, else line_item_unblended_rate",
    ),
    Rule(
        "EffectiveCost",
        (
            "line_item_line_item_type",
            "line_item_unblended_cost",
            "line_item_net_unblended_cost",
            "savings_plan_savings_plan_effective_cost",
            "reservation_effective_cost",
            "reservation_reservation_a_r_n",
            "reservation_unused_amortized_upfront_fee_for_billing_period",
            "reservation_unused_recurring_fee",
            "savings_plan_total_commitment_to_date",
            "savings_plan_used_commitment",
        ),  # fmt: skip
        fn=effective_cost,
        how="amortised cost: savings_plan_savings_plan_effective_cost on SavingsPlanCoveredUsage; "
        "reservation_effective_cost on DiscountedUsage; 0 on SavingsPlanNegation, SavingsPlanUpfrontFee and an "
        "RI's upfront Fee (their cost is in the covered usage); on RIFee the unused part, "
        "reservation_unused_amortized_upfront_fee_for_billing_period + reservation_unused_recurring_fee; on "
        "SavingsPlanRecurringFee the unused commitment, savings_plan_total_commitment_to_date - "
        "savings_plan_used_commitment; else the net unblended cost, or the unblended cost",
    ),
    Rule("InvoiceId", "bill_invoice_id"),
    Rule(
        "InvoiceIssuerName",
        "bill_invoicing_entity",
        fn=with_default("Amazon Web Services, Inc."),
        how="bill_invoicing_entity, else Amazon Web Services, Inc.",
    ),
    Rule(
        "ListCost",
        ("pricing_public_on_demand_cost", "line_item_unblended_cost"),
        fn=list_cost,
        how="pricing_public_on_demand_cost; lines without a public price (tax, credits, fees) keep their "
        "unblended cost",
    ),
    Rule("ListUnitPrice", "pricing_public_on_demand_rate"),
    Rule(
        "PricingCategory",
        ("line_item_line_item_type", "pricing_term", "line_item_usage_type", "reservation_reservation_a_r_n"),
        fn=pricing_category,
        how="Committed for the commitment lines (SavingsPlanCoveredUsage, DiscountedUsage, SavingsPlanNegation, "
        "SavingsPlanUpfrontFee, SavingsPlanRecurringFee, RIFee, an RI's upfront Fee) and usage with pricing_term "
        "Reserved; Dynamic for Spot usage (pricing_term Spot or a SpotUsage usage type); Standard for OnDemand "
        "usage and other Fee purchases; Other for usage without a term; empty for tax and credits",
    ),
    Rule("PricingQuantity", "line_item_usage_amount"),
    Rule("PricingUnit", "pricing_unit"),
    Rule("ProviderName", const="AWS"),
    Rule(
        "PublisherName",
        "line_item_legal_entity",
        fn=with_default("Amazon Web Services, Inc."),
        how="line_item_legal_entity (the seller, e.g. a Marketplace vendor), else Amazon Web Services, Inc.",
    ),
    Rule("RegionId", "product_region_code"),
    Rule("RegionName", "product_location"),
    Rule("ResourceId", "line_item_resource_id"),
    Rule("ResourceType", "product_product_family"),
    Rule(
        "ServiceCategory",
        "line_item_product_code",
        fn=lookup(SERVICE_CATEGORY, default="Other"),
        how="a table of line_item_product_code values (AmazonEC2 -> Compute, AmazonS3 -> Storage, AmazonRDS -> "
        "Databases, AWSELB -> Networking, ... see SERVICE_CATEGORY); unknown codes -> Other",
    ),
    Rule(
        "ServiceName",
        ("product_product_name", "product", "line_item_product_code"),
        fn=service_name,
        how="product_product_name (legacy CUR), else the product map's product_name (CUR 2.0), else the "
        "product code's AWS name (AmazonEC2 -> Amazon Elastic Compute Cloud) or the code itself",
    ),
    Rule("SkuId", "product_sku"),
    Rule("SkuMeter", "line_item_usage_type"),
    Rule("SkuPriceId", "pricing_rate_code"),
    Rule("SubAccountId", "line_item_usage_account_id"),
    Rule("SubAccountName", "line_item_usage_account_name"),
    Rule(
        "Tags",
        "resource_tags",
        fn=lambda arr: arr,  # replaced in CurMapping.apply, which also reads the legacy per-tag columns
        how="a JSON object of the resource tags: the CUR 2.0 resource_tags map, or every legacy "
        "resource_tags_* / resourceTags/* column; user tags without their user: / user_ prefix "
        "(resourceTags/user:Name -> Name; Parquet names are lower case, resource_tags_user_cost_center -> "
        "cost_center), AWS tags as they are (aws:createdBy); empty values left out",
    ),
]


@dataclass
class CurMapping(ColumnMapping):
    """The CUR rules, plus legacy header renaming and tags gathered from any number of tag columns."""

    def missing_required(self, names: Sequence[str]) -> list[str]:
        return super().missing_required([cur_column_name(n) for n in names])

    def wanted(self, names: Sequence[str]) -> list[str]:
        sources = self.source_columns
        return [n for n in names if cur_column_name(n) in sources or tag_key(n) is not None]

    def apply(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        names = batch.schema.names
        columns, renamed = [], []
        for i, name in enumerate(names):
            new = cur_column_name(name)
            if tag_key(name) is None and new not in renamed:
                column = _combined(batch.column(i))
                if pa.types.is_floating(column.type):
                    # CUR Parquet keeps money as double: its shortest round-trip text, once, for every rule using it.
                    column = column.cast(pa.string())
                columns.append(column)
                renamed.append(new)
        table = super().apply(pa.RecordBatch.from_arrays(columns, names=renamed) if renamed else batch)
        tags = self.tags(batch)
        return table.set_column(table.schema.get_field_index("Tags"), "Tags", tags)

    @staticmethod
    def tags(batch) -> pa.Array:
        n = batch.num_rows
        names = batch.schema.names
        tag_columns = [(tag_key(name), i) for i, name in enumerate(names) if tag_key(name) is not None]
        parts = [as_text(_combined(batch.column(i))) for _, i in tag_columns]
        has_map = "resource_tags" in names
        if has_map:
            parts.append(_map_text(batch.column(names.index("resource_tags"))))
        if not parts:
            return pa.nulls(n, pa.string())
        # Distinct tag combinations only: Python builds one JSON text per combination, not per row.
        filled = [pc.fill_null(p, "\x00") for p in parts]
        joined = pc.binary_join_element_wise(*filled, "\x1f") if len(filled) > 1 else filled[0]
        texts: dict[str, str | None] = {}
        keys = [k for k, _ in tag_columns]
        for combo in pc.unique(joined).to_pylist():
            values = combo.split("\x1f")
            tags: dict[str, str] = {}
            if has_map:
                raw = values.pop()
                for k, v in (_parse_map_text(raw) if raw not in ("\x00", "") else {}).items():
                    if v not in (None, ""):
                        key = k[5:] if k.startswith(("user_", "user:")) else k
                        tags[key] = str(v)
            for key, value in zip(keys, values, strict=True):
                if value not in ("\x00", ""):
                    tags[key] = value
            texts[combo] = json.dumps(tags, sort_keys=True) if tags else None
        lookup_keys = pa.array(list(texts), pa.string())
        return pc.take(pa.array(list(texts.values()), pa.string()), pc.index_in(joined, value_set=lookup_keys))


def _combined(arr):
    if isinstance(arr, pa.ChunkedArray):
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


CUR = CurMapping("AWS CUR 2.0 / legacy CUR", CUR_RULES)


# --- deliveries in S3 ---


@dataclass(frozen=True)
class _Object:
    key: str
    etag: str
    size: int
    modified: float


class S3ExportSource(ExportCostSource):
    """The account's CUR 2.0 / FOCUS / legacy CUR export in S3 (settings bucket, prefix, export_name, layout, table)."""

    def __init__(self, account, context: AwsContext | None = None):
        super().__init__(account)
        self.context = context or AwsContext(account)
        self.settings = self.context.settings

    # where things are

    @property
    def root(self) -> str:
        s = self.settings
        return f"{s.prefix}/{s.export_name}/" if s.prefix else f"{s.export_name}/"

    def objects(self) -> dict[str, _Object]:
        """Every object under the export's folder (one paginated ListObjectsV2)."""
        s3 = self.context.client("s3")
        out: dict[str, _Object] = {}
        with aws_errors("s3:ListBucket", f"{bucket_arn(self.settings.bucket)} (prefix {self.root})"):
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=self.root):
                for item in page.get("Contents", []):
                    out[item["Key"]] = _Object(
                        item["Key"], item.get("ETag", "").strip('"'), int(item.get("Size", 0)),
                        item["LastModified"].timestamp(),
                    )  # fmt: skip
        return out

    def manifests(self, objects: dict[str, _Object]) -> dict[str, str]:
        """Billing period -> key of its newest manifest, in the configured (or detected) layout."""
        layouts = ["data_exports", "legacy_cur"] if self.settings.layout == "auto" else [self.settings.layout]
        for layout in layouts:
            found = self._data_exports(objects) if layout == "data_exports" else self._legacy(objects)
            if found:
                return found
        return {}

    def _data_exports(self, objects: dict[str, _Object]) -> dict[str, str]:
        name = re.escape(self.settings.export_name)
        pattern = re.compile(
            rf"^{re.escape(self.root)}metadata/BILLING_PERIOD=(\d{{4}}-\d{{2}})/(?:.+/)?{name}-Manifest\.json$"
        )
        best: dict[str, _Object] = {}
        for obj in objects.values():
            m = pattern.match(obj.key)
            # Newest LastModified wins; within the same second (S3's resolution) the later key.
            if m and (
                m.group(1) not in best or (obj.modified, obj.key) > (best[m.group(1)].modified, best[m.group(1)].key)
            ):
                best[m.group(1)] = obj
        return {period: obj.key for period, obj in best.items()}

    def _legacy(self, objects: dict[str, _Object]) -> dict[str, str]:
        name = re.escape(self.settings.export_name)
        pattern = re.compile(
            rf"^{re.escape(self.root)}(\d{{4}})(\d{{2}})\d{{2}}-\d{{8}}/(?:([^/]+)/)?{name}-Manifest\.json$"
        )
        best: dict[str, tuple[bool, float, str]] = {}
        for obj in objects.values():
            m = pattern.match(obj.key)
            if not m:
                continue
            period = f"{m.group(1)}-{m.group(2)}"
            rank = (m.group(3) is None, obj.modified, obj.key)  # the period-level manifest first, then the newest
            if period not in best or rank > best[period]:
                best[period] = rank
        return {period: rank[2] for period, rank in best.items()}

    def read_manifest(self, key: str) -> dict:
        s3 = self.context.client("s3")
        with aws_errors("s3:GetObject", bucket_arn(self.settings.bucket, key)):
            body = s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise PermanentError(f"s3://{self.settings.bucket}/{key}: the manifest is not JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise PermanentError(f"s3://{self.settings.bucket}/{key}: the manifest is not a JSON object")
        return manifest

    def manifest_files(self, key: str, manifest: dict) -> list[str]:
        files = manifest.get("dataFiles")
        if files is None:
            files = manifest.get("reportKeys")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise PermanentError(
                f"s3://{self.settings.bucket}/{key}: the manifest has no dataFiles / reportKeys list of objects"
            )
        keys = []
        for f in files:
            if f.startswith("s3://"):
                bucket, _, object_key = f[5:].partition("/")
                if bucket != self.settings.bucket:
                    raise PermanentError(
                        f"s3://{self.settings.bucket}/{key}: lists {f}, which is in another bucket than "
                        f"settings.bucket {self.settings.bucket!r}"
                    )
                f = object_key
            if f.lower().endswith(".zip"):
                raise PermanentError(
                    f"s3://{self.settings.bucket}/{f}: ZIP-compressed reports are not read; set the report's "
                    "compression to GZIP or Parquet"
                )
            keys.append(f)
        return keys

    def mapping_for(self, manifest: dict) -> ColumnMapping | None:
        table = self.settings.table
        if table == "focus":
            return None
        if table == "cur":
            return CUR
        names = set()
        for column in manifest.get("columns") or []:
            if isinstance(column, dict) and column.get("name"):
                names.add(str(column["name"]))
        return None if {"BilledCost", "ChargePeriodStart"} <= names else CUR

    def deliveries(self, *, billing_period: str | None = None) -> list[Delivery]:
        objects = self.objects()
        manifests = self.manifests(objects)
        out = []
        for period in sorted(manifests):
            if billing_period and period != billing_period:
                continue
            key = manifests[period]
            manifest = self.read_manifest(key)
            files = []
            for data_key in self.manifest_files(key, manifest):
                obj = objects.get(data_key)
                if obj is None:
                    raise TransientError(
                        f"s3://{self.settings.bucket}/{key} lists {data_key}, which is not in the bucket "
                        "(a delivery still being written?)"
                    )
                file = ExportFile(data_key, obj.etag, obj.size)
                wanted = self.settings.format
                if wanted != "auto" and not file.format.startswith(wanted):
                    raise PermanentError(
                        f"s3://{self.settings.bucket}/{data_key} is {file.format}, but settings.format is {wanted!r}: "
                        "change the setting or the export's format"
                    )
                files.append(file)
            out.append(Delivery(period, files, self.mapping_for(manifest), label=key))
        return out

    def download(self, file: ExportFile, dest: Path) -> None:
        s3 = self.context.client("s3")
        with aws_errors("s3:GetObject", bucket_arn(self.settings.bucket, file.key)):
            body = s3.get_object(Bucket=self.settings.bucket, Key=file.key)["Body"]
            with open(dest, "wb") as fh:
                shutil.copyfileobj(body, fh, 1 << 20)

    # CUR files: legacy headers renamed, and every tag column read
    def _wanted(self, names: list[str], mapping: ColumnMapping | None) -> list[str]:
        if isinstance(mapping, CurMapping):
            return mapping.wanted(names)
        return super()._wanted(names, mapping)

# ruff: noqa: E501  (markdown table rows are one line each)
"""docs/mappings/aws.md, rendered from the mapping tables in code (`python -m providers_app.connectors.aws.docs`)."""

from __future__ import annotations

from pathlib import Path

INTRO = """# AWS -> FOCUS 1.2

Rendered from the rule tables in `providers_app/connectors/aws/cur.py` and `cost_explorer.py` by
`python -m providers_app.connectors.aws.docs` (a test fails when this file and the code disagree).

## Where the connector finds an export

settings `bucket`, `prefix`, `export_name`; `layout` "auto" tries Data Exports first, then legacy CUR.

| layout | manifest | data files |
|---|---|---|
| Data Exports (CUR 2.0, FOCUS 1.2) | `<prefix>/<export>/metadata/BILLING_PERIOD=YYYY-MM/[<version>/]<export>-Manifest.json` | its `dataFiles` (s3:// URIs, `.../data/BILLING_PERIOD=YYYY-MM/...`) |
| legacy CUR | `<prefix>/<report>/<yyyymmdd>-<yyyymmdd>/<report>-Manifest.json` (else the newest `<assemblyId>/<report>-Manifest.json`) | its `reportKeys` |

- Newest manifest per billing period: the period-level one (legacy), else the latest `LastModified` (a tie within
  S3's one-second resolution goes to the later key).
- A period's fingerprint is its data files' keys, ETags and sizes (one ListObjectsV2 of the export folder); a
  period whose fingerprint was loaded before is skipped (`unchanged_periods`). A manifest that lists an object not
  in the bucket is a transient error (a delivery still being written).
- Formats: CSV, CSV.gz (GZIP) and Parquet; ZIP-compressed legacy reports are refused with a message. AWS writes
  Parquet money columns as doubles: they are read as their shortest round-trip text (what AWS computed), then
  stored as numeric; CSV money is read as text and stays exact.
- Which table: settings `table` "cur" / "focus", or "auto": FOCUS when the manifest's `columns` has BilledCost
  and ChargePeriodStart, else CUR. A FOCUS export is read as FOCUS; AWS's `x_` columns are ignored.
- Legacy CSV headers (`lineItem/UsageStartDate`, `savingsPlan/SavingsPlanARN`) are read under their CUR 2.0 /
  Athena names (`line_item_usage_start_date`, `savings_plan_savings_plan_a_r_n`): an underscore before each
  capital, lower case, other characters as one underscore.

## CUR 2.0 and legacy CUR

FOCUS columns without a rule (BillingAccountType, CapacityReservation*, CommitmentDiscountName/Quantity/Unit,
PricingCurrency*, ResourceName, ServiceSubcategory, SkuPriceDetails) are left empty: CUR has no column for them.

"""

CE_NOTES = """

What Cost Explorer cannot give (left empty): AvailabilityZone, RegionName, and RegionId or SubAccountId
(GetCostAndUsage allows two GroupBy dimensions: SERVICE and, by settings `cost_explorer_group_by`, LINKED_ACCOUNT
(default) or REGION), ResourceId/ResourceType (resource-level data exists only
for the last 14 days and only with opt-in), SkuId/SkuPriceId/SkuMeter, unit prices, ConsumedQuantity/PricingUnit
(UsageQuantity sums units that differ between usage types), commitment discount columns, InvoiceId, Tags. ListCost
equals BilledCost (no public on-demand price). A period's fingerprint is a hash of its rows, so an unchanged month
is skipped; days Cost Explorer marks `Estimated` say so in ChargeDescription and are replaced on later syncs.

## Resources and the ResourceId they join

| kind | resource_id (= CUR line_item_resource_id) | attributes |
|---|---|---|
| instance | `i-…` | instance_type, stopped_at (from StateTransitionReason), attached_volume_ids, cpu_hourly + cpu_hourly_end (AWS/EC2 CPUUtilization, hourly Average), created_at = LaunchTime |
| volume | `vol-…` | size_gb, volume_type, attached_to, created_at |
| snapshot | `snap-…` (owned by the account) | size_gb, source_volume_id ("" for vol-ffffffff), created_at = StartTime |
| ip_address | `eipalloc-…` (the public IP for EC2-Classic addresses without an allocation id) | address, associated_with (instance or ENI id), created_at "" (not in the API) |
| load_balancer | the ELBv2 ARN; classic: `arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/NAME` | lb_type, target_count (registered targets), request_count_daily (AWS/ApplicationELB or AWS/ELB RequestCount, daily Sum; ALB and classic), created_at |
| database | the RDS instance ARN `arn:aws:rds:REGION:ACCOUNT:db:ID` | instance_class, engine, cpu_hourly + cpu_hourly_end (AWS/RDS), created_at |
| bucket | the bucket name | created_at, tags |

CloudWatch figures come from GetMetricData, up to 500 metric queries per call, over settings `cpu_lookback_days`
(default 14); `cpu_hourly` runs from the first to the last hour with data, `null` for an hour without one.
"""


def render() -> str:
    from .cost_explorer import COST_EXPLORER
    from .cur import CUR

    return (
        INTRO
        + CUR.markdown()
        + '\n\n## Cost Explorer (settings source "cost_explorer")\n\n'
        + (COST_EXPLORER.markdown() + CE_NOTES)
    )


def path() -> Path:
    return Path(__file__).resolve().parents[3] / "docs" / "mappings" / "aws.md"


if __name__ == "__main__":
    import django

    django.setup()
    path().write_text(render())
    print(path())

"""The demo's cost data (`manage.py seed_demo`): a generated FOCUS export per demo account, ending yesterday.

Generated, not a sample file, because what the demo must show depends on the dates: budgets watch the current
month, anomaly detection judges the last week against four weeks before it, and optimisation looks at the last
30 days. The data is deterministic for a given end day and length (one random generator per account, seeded by
its name), so seeding twice on the same day writes the same rows.

What is in it, per account: compute, databases, storage, networking and monitoring resources over several
sub-accounts and regions with owner/environment/team tags; a weekly pattern (dev machines mostly off at
weekends) and multiplicative noise; and what the product should find:
- a one-day spike (a GPU training instance, `demo-aws`, two days ago) and a level shift (a new analytics
  database from five days ago, `demo-azure`): anomalies with root causes;
- an idle Elastic IP / public IP and an idle load balancer (billed, zero usage), an unattached volume and a
  snapshot of a volume deleted long ago: recommendations with savings;
- a project (`demo-gcp`) with much of its spend lacking the owner tag: the untagged-spend governance rule.
"""

from __future__ import annotations

import csv
import filecmp
import gzip
import io
import json
import os
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from providers_app import focus_schema as focus

# The FOCUS 1.0 columns (every one must be present; those 1.1/1.2 added may be absent), in FOCUS's order.
HEADER = tuple(c.name for c in focus.COLUMNS if c.since == "1.0")
WEEKEND = (5, 6)  # Saturday, Sunday
NOISE = 0.04  # relative standard deviation of a resource's daily cost


@dataclass(frozen=True)
class Resource:
    resource_id: str
    name: str
    kind: str  # FOCUS ResourceType; the inventory's RESOURCE_KINDS names where the rules read them
    service: str
    category: str
    region: str
    sub_account: int  # index into the account's sub-accounts
    daily: float  # USD on a weekday
    unit: str
    quantity: float  # consumed per day; 0 for something billed but unused
    tags: dict = field(default_factory=dict)
    weekend: float = 1.0  # cost factor on Saturdays and Sundays
    since: int | None = None  # billed only from this many days before the last day (None: from the start)
    until: int = 0  # billed only up to this many days before the last day


@dataclass(frozen=True)
class Account:
    name: str
    team: str
    provider_name: str
    invoice_issuer: str
    billing_account: tuple[str, str]
    sub_accounts: tuple[tuple[str, str], ...]
    regions: dict[str, str]
    resources: tuple[Resource, ...]
    # What the demo makes of it, for the people reading seed_demo's output.
    story: str = ""
    # Inventory attributes a cloud connector would report; a FOCUS file has no column for them.
    attributes: dict[str, dict] = field(default_factory=dict)


def _tags(owner: str | None, environment: str, team: str) -> dict:
    tags = {"environment": environment, "team": team}
    if owner:
        tags["owner"] = owner
    return tags


def _aws() -> Account:
    ec2, ebs = "Amazon Elastic Compute Cloud", "Amazon Elastic Block Store"
    res = [
        Resource("i-0a1b2c3d4e5f60001", "web-prod-1", "instance", ec2, "Compute", "us-east-1", 0, 58.0,
                 "Hours", 24, _tags("alice", "prod", "web")),
        Resource("i-0a1b2c3d4e5f60002", "web-prod-2", "instance", ec2, "Compute", "us-east-1", 0, 58.0,
                 "Hours", 24, _tags("alice", "prod", "web")),
        Resource("i-0a1b2c3d4e5f60003", "batch-worker", "instance", ec2, "Compute", "eu-west-1", 1, 41.0,
                 "Hours", 24, _tags("bob", "prod", "data")),
        Resource("i-0a1b2c3d4e5f60004", "ci-runner", "instance", ec2, "Compute", "us-east-1", 1, 36.0,
                 "Hours", 24, _tags("carol", "dev", "platform"), weekend=0.25),
        Resource("i-0a1b2c3d4e5f60005", "dev-sandbox", "instance", ec2, "Compute", "us-west-2", 1, 22.0,
                 "Hours", 24, _tags("dave", "dev", "web"), weekend=0.1),
        Resource("db-orders-prod", "orders-postgres", "database", "Amazon Relational Database Service",
                 "Databases", "us-east-1", 0, 74.0, "Hours", 24, _tags("alice", "prod", "web")),
        Resource("arn:aws:s3:::demo-assets", "demo-assets", "bucket", "Amazon Simple Storage Service", "Storage",
                 "us-east-1", 0, 18.0, "GB-Mo", 850, _tags("alice", "prod", "web")),
        Resource("arn:aws:s3:::demo-datalake", "demo-datalake", "bucket", "Amazon Simple Storage Service",
                 "Storage", "eu-west-1", 1, 31.0, "GB-Mo", 1400, _tags("bob", "prod", "data")),
        Resource("vol-0aa0000000000001", "web-prod-1-root", "volume", ebs, "Storage", "us-east-1", 0, 3.2,
                 "GB-Mo", 1.0, _tags("alice", "prod", "web")),
        Resource("vol-0aa0000000000002", "web-prod-2-root", "volume", ebs, "Storage", "us-east-1", 0, 3.2,
                 "GB-Mo", 1.0, _tags("alice", "prod", "web")),
        # Orphans: attached to nothing since its instance went away, and a snapshot of a volume deleted long ago.
        Resource("vol-0bb0000000000009", "old-reporting-data", "volume", ebs, "Storage", "us-east-1", 1, 6.4,
                 "GB-Mo", 1.0, _tags("bob", "prod", "data")),
        Resource("vol-0cc0000000000007", "legacy-etl-data", "volume", ebs, "Storage", "eu-west-1", 1, 4.0,
                 "GB-Mo", 1.0, _tags("bob", "prod", "data"), until=45),
        Resource("snap-0dd0000000000003", "legacy-etl-backup", "snapshot", ebs, "Storage", "eu-west-1", 1, 2.6,
                 "GB-Mo", 1.0, _tags("bob", "prod", "data")),
        # Idle: reserved and billed, nothing uses it.
        Resource("eipalloc-0ee000000000004", "unused-eip", "ip_address", "Amazon Virtual Private Cloud",
                 "Networking", "us-east-1", 0, 3.6, "Hours", 0, _tags("carol", "prod", "platform")),
        Resource("arn:aws:elasticloadbalancing:us-east-1:222233334444:loadbalancer/app/old-api/5a1b", "old-api-alb",
                 "load_balancer", "Elastic Load Balancing", "Networking", "us-east-1", 0, 5.4, "LCU-Hours", 0,
                 _tags("alice", "prod", "web")),
        Resource("cloudwatch-metrics", "metrics", "metrics", "Amazon CloudWatch", "Management and Governance",
                 "us-east-1", 0, 9.0, "Metrics", 1200, _tags("carol", "prod", "platform")),
        # The spike: a GPU training job left running for one day.
        Resource("i-0f9e8d7c6b5a40099", "ml-training-gpu", "instance", ec2, "AI and Machine Learning", "us-east-1",
                 1, 1150.0, "Hours", 24, _tags("erin", "dev", "ml"), since=2, until=2),
    ]  # fmt: skip
    return Account(
        name="demo-aws",
        team="Default",
        provider_name="AWS",
        invoice_issuer="Amazon Web Services, Inc.",
        billing_account=("111122223333", "Demo Corp (AWS)"),
        sub_accounts=(("222233334444", "demo-production"), ("333344445555", "demo-development")),
        regions={
            "us-east-1": "US East (N. Virginia)",
            "eu-west-1": "Europe (Ireland)",
            "us-west-2": "US West (Oregon)",
        },
        resources=tuple(res),
        story="spike two days ago (ml-training-gpu), unattached volume, orphaned snapshot, idle Elastic IP and ALB",
        attributes={
            "vol-0bb0000000000009": {"attached_to": [], "size_gb": 2000, "volume_type": "gp3"},
            "vol-0aa0000000000001": {"attached_to": ["i-0a1b2c3d4e5f60001"], "size_gb": 100, "volume_type": "gp3"},
            "vol-0aa0000000000002": {"attached_to": ["i-0a1b2c3d4e5f60002"], "size_gb": 100, "volume_type": "gp3"},
            "snap-0dd0000000000003": {"source_volume_id": "vol-0cc0000000000007", "size_gb": 500},
        },
    )


def _azure() -> Account:
    vm = "Virtual Machines"
    res = [
        Resource("/subscriptions/a1/resourceGroups/shop/providers/Microsoft.Compute/virtualMachines/shop-vm-1",
                 "shop-vm-1", "instance", vm, "Compute", "westeurope", 0, 46.0, "Hours", 24,
                 _tags("frank", "prod", "shop")),
        Resource("/subscriptions/a1/resourceGroups/shop/providers/Microsoft.Compute/virtualMachines/shop-vm-2",
                 "shop-vm-2", "instance", vm, "Compute", "westeurope", 0, 46.0, "Hours", 24,
                 _tags("frank", "prod", "shop")),
        Resource("/subscriptions/a2/resourceGroups/test/providers/Microsoft.Compute/virtualMachines/test-vm",
                 "test-vm", "instance", vm, "Compute", "northeurope", 1, 28.0, "Hours", 24,
                 _tags("grace", "test", "shop"), weekend=0.2),
        Resource("/subscriptions/a1/resourceGroups/shop/providers/Microsoft.Sql/servers/shop/databases/orders",
                 "shop-orders-db", "database", "Azure SQL Database", "Databases", "westeurope", 0, 63.0, "Hours", 24,
                 _tags("frank", "prod", "shop")),
        Resource("/subscriptions/a1/resourceGroups/shop/providers/Microsoft.Storage/storageAccounts/shopmedia",
                 "shopmedia", "bucket", "Storage", "Storage", "westeurope", 0, 14.0, "GB-Mo", 600,
                 _tags("frank", "prod", "shop")),
        Resource("/subscriptions/a1/resourceGroups/shop/providers/Microsoft.Network/publicIPAddresses/old-ip",
                 "old-gateway-ip", "ip_address", "Virtual Network", "Networking", "westeurope", 0, 2.9, "Hours", 0,
                 _tags("frank", "prod", "shop")),
        Resource("/subscriptions/a1/resourceGroups/ops/providers/Microsoft.Insights/components/shop-insights",
                 "shop-insights", "monitoring", "Azure Monitor", "Management and Governance", "westeurope", 0, 7.5,
                 "GB", 30, _tags("grace", "prod", "ops")),
        # The level shift: an analytics database created five days ago, running ever since.
        Resource("/subscriptions/a2/resourceGroups/bi/providers/Microsoft.Sql/servers/bi/databases/analytics",
                 "analytics-db", "database", "Azure SQL Database", "Databases", "northeurope", 1, 240.0, "Hours", 24,
                 _tags("heidi", "prod", "bi"), since=5),
    ]  # fmt: skip
    return Account(
        name="demo-azure",
        team="Default",
        provider_name="Microsoft",
        invoice_issuer="Microsoft",
        billing_account=("EA-8608480", "Demo Corp (Azure)"),
        sub_accounts=(("a1-shop-prod", "Shop production"), ("a2-shop-test", "Shop test")),
        regions={"westeurope": "West Europe", "northeurope": "North Europe"},
        resources=tuple(res),
        story="level shift since five days ago (analytics-db), idle public IP",
    )


def _gcp() -> Account:
    gce = "Compute Engine"
    res = [
        Resource("projects/demo-ml/zones/europe-west4-a/instances/trainer-1", "trainer-1", "instance", gce,
                 "Compute", "europe-west4", 0, 52.0, "Hours", 24, _tags(None, "prod", "ml")),
        Resource("projects/demo-ml/zones/europe-west4-a/instances/trainer-2", "trainer-2", "instance", gce,
                 "Compute", "europe-west4", 0, 52.0, "Hours", 24, _tags(None, "prod", "ml")),
        Resource("projects/demo-web/zones/us-central1-a/instances/frontend", "frontend", "instance", gce,
                 "Compute", "us-central1", 1, 31.0, "Hours", 24, _tags("ivan", "prod", "web")),
        Resource("projects/demo-ml/instances/feature-store", "feature-store", "database", "Cloud SQL", "Databases",
                 "europe-west4", 0, 39.0, "Hours", 24, _tags("judy", "prod", "ml")),
        Resource("projects/demo-ml/buckets/demo-ml-datasets", "demo-ml-datasets", "bucket", "Cloud Storage",
                 "Storage", "europe-west4", 0, 22.0, "GiB-Mo", 1100, _tags(None, "prod", "ml")),
        Resource("projects/demo-web/datasets/analytics", "analytics", "dataset", "BigQuery", "Analytics",
                 "us-central1", 1, 27.0, "TiB", 0.4, _tags("ivan", "prod", "web"), weekend=0.5),
    ]  # fmt: skip
    return Account(
        name="demo-gcp",
        team="Default",
        provider_name="Google Cloud",
        invoice_issuer="Google",
        billing_account=("01ABCD-234567-89EFGH", "Demo Corp (GCP)"),
        sub_accounts=(("demo-ml", "demo-ml"), ("demo-web", "demo-web")),
        regions={"europe-west4": "Netherlands", "us-central1": "Iowa"},
        resources=tuple(res),
        story="most of its spend lacks the owner tag",
    )


def _research() -> Account:
    ec2 = "Amazon Elastic Compute Cloud"
    res = [
        Resource("i-0r0000000000000a1", "hpc-node-1", "instance", ec2, "Compute", "us-east-2", 0, 64.0, "Hours", 24,
                 _tags("kim", "prod", "research"), weekend=0.6),
        Resource("i-0r0000000000000a2", "hpc-node-2", "instance", ec2, "Compute", "us-east-2", 0, 64.0, "Hours", 24,
                 _tags("kim", "prod", "research"), weekend=0.6),
        Resource("arn:aws:s3:::research-results", "research-results", "bucket", "Amazon Simple Storage Service",
                 "Storage", "us-east-2", 0, 12.0, "GB-Mo", 500, _tags("kim", "prod", "research")),
    ]  # fmt: skip
    return Account(
        name="demo-research",
        team="Research",
        provider_name="AWS",
        invoice_issuer="Amazon Web Services, Inc.",
        billing_account=("444455556666", "Demo University (AWS)"),
        sub_accounts=(("444455556666", "research"),),
        regions={"us-east-2": "US East (Ohio)"},
        resources=tuple(res),
        story="another team's account: visible to its members only",
    )


def demo_accounts() -> list[Account]:
    return [_aws(), _azure(), _gcp(), _research()]


@dataclass
class Generated:
    path: Path
    rows: int
    first_day: date
    last_day: date
    # (service, month start) -> USD, to size the demo budgets to what was generated.
    spend: dict[tuple[str, date], Decimal]

    def month_spend(self, month: date, service: str | None = None) -> Decimal:
        return sum(
            (v for (s, m), v in self.spend.items() if m == month and (service is None or s == service)), Decimal(0)
        )


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _ts(day: date) -> str:
    return f"{day:%Y-%m-%d} 00:00:00"


def focus_file_write(account: Account, *, last_day: date, days: int, path: Path) -> Generated:
    """Write `account`'s FOCUS export of the `days` days ending `last_day` (gzipped CSV, one line per resource per
    day, ChargePeriod = the day) to `path`."""
    first_day = last_day - timedelta(days=days - 1)
    rng = np.random.default_rng(zlib.crc32(f"{account.name}:{last_day}:{days}".encode()))
    noise = rng.normal(1.0, NOISE, size=(days, len(account.resources))).clip(0.8, 1.2)
    spend: dict[tuple[str, date], Decimal] = defaultdict(Decimal)
    rows = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    # No time stamp in the gzip header: the same data makes the same bytes, and an unchanged file is kept as it
    # is, so a sync of the account sees an export it already loaded.
    with (
        open(partial, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as zipped,
        io.TextIOWrapper(zipped, encoding="utf-8", newline="") as handle,
    ):
        writer = csv.DictWriter(handle, fieldnames=HEADER, restval="")
        writer.writeheader()
        for index in range(days):
            day = first_day + timedelta(days=index)
            before_end = (last_day - day).days
            month = _month_start(day)
            for column, r in enumerate(account.resources):
                if (r.since is not None and before_end > r.since) or before_end < r.until:
                    continue
                factor = noise[index, column] * (r.weekend if day.weekday() in WEEKEND else 1.0)
                cost = Decimal(f"{r.daily * factor:.6f}")
                quantity = f"{r.quantity * (factor if r.unit == 'Hours' else 1.0):.4f}"
                sub_id, sub_name = account.sub_accounts[r.sub_account]
                writer.writerow({
                    "BilledCost": cost, "BillingAccountId": account.billing_account[0],
                    "BillingAccountName": account.billing_account[1], "BillingCurrency": "USD",
                    "BillingPeriodEnd": _ts(_next_month(month)), "BillingPeriodStart": _ts(month),
                    "ChargeCategory": "Usage", "ChargeDescription": f"{r.service} {r.unit.lower()} ({r.name})",
                    "ChargeFrequency": "Usage-Based", "ChargePeriodEnd": _ts(day + timedelta(days=1)),
                    "ChargePeriodStart": _ts(day), "ConsumedQuantity": quantity, "ConsumedUnit": r.unit,
                    "ContractedCost": cost, "EffectiveCost": cost, "InvoiceIssuerName": account.invoice_issuer,
                    "ListCost": (cost * Decimal("1.08")).quantize(Decimal("0.000001")), "PricingCategory": "Standard",
                    "PricingQuantity": quantity, "PricingUnit": r.unit, "ProviderName": account.provider_name,
                    "PublisherName": account.invoice_issuer, "RegionId": r.region,
                    "RegionName": account.regions[r.region], "ResourceId": r.resource_id, "ResourceName": r.name,
                    "ResourceType": r.kind, "ServiceCategory": r.category, "ServiceName": r.service,
                    "SkuId": f"SKU-{r.kind}-{r.unit}".upper(), "SubAccountId": sub_id, "SubAccountName": sub_name,
                    "Tags": json.dumps(r.tags, sort_keys=True),
                })  # fmt: skip
                spend[(r.service, month)] += cost
                rows += 1
    if path.exists() and filecmp.cmp(partial, path, shallow=False):
        partial.unlink()
    else:
        os.replace(partial, path)
    return Generated(path=path, rows=rows, first_day=first_day, last_day=last_day, spend=dict(spend))

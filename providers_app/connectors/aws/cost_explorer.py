"""Cost Explorer `GetCostAndUsage` as the cost source of an AWS account without a CUR / Data Exports delivery.

Daily cost per SERVICE x LINKED_ACCOUNT, or SERVICE x REGION with settings cost_explorer_group_by "REGION"
(Cost Explorer allows two GroupBy dimensions, so one of SubAccountId / RegionId stays empty),
metrics UnblendedCost, AmortizedCost, NetUnblendedCost and UsageQuantity, every page (NextPageToken) read.
The response rows are laid out as a small table (the `CE_FIELDS` below) and mapped to FOCUS 1.2 with the
`COST_EXPLORER` rules, then checked like any export.

What Cost Explorer cannot give, and so stays empty or is approximated (documented in docs/mappings/aws.md):
resource ids, regions, availability zones, SKUs, prices, pricing/usage units, commitment discount columns,
invoice id, tags; ListCost is the unblended cost (no public on-demand price); ChargeCategory is Usage except
for the "Tax" service; a day still being estimated (`Estimated: true`) is loaded and replaced on the next sync.
Change detection: a period's fingerprint is the hash of its rows, so an unchanged month is not rewritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from finops.errors import PermanentError

from ..base import CostBatch, CostSource
from ..focus import normalise
from ..mapping import ColumnMapping, Rule, as_text, coalesce
from .session import AwsContext, aws_errors

METRICS = ["UnblendedCost", "AmortizedCost", "NetUnblendedCost", "UsageQuantity"]
CE_FIELDS = [
    "TimePeriod.Start", "TimePeriod.End", "billing_period_start", "billing_period_end", "billing_account_id",
    "SERVICE", "LINKED_ACCOUNT", "REGION", "UnblendedCost", "AmortizedCost", "NetUnblendedCost", "UsageQuantity",
    "Unit", "Estimated",
]  # fmt: skip

# Cost Explorer's SERVICE names -> FOCUS ServiceCategory, by the words they contain (first match wins).
SERVICE_WORDS = [
    ("Compute", ("Compute Cloud", "EC2", "Lambda", "Elastic Container", "Kubernetes", "Fargate", "Lightsail", "Batch")),
    ("Storage", ("Simple Storage", "S3", "Elastic File", "Glacier", "Backup", "FSx", "Storage Gateway")),
    ("Databases", ("Relational Database", "RDS", "DynamoDB", "ElastiCache", "DocumentDB", "Neptune", "Aurora")),
    ("Analytics", ("Redshift", "Athena", "Glue", "Kinesis", "OpenSearch", "Elasticsearch", "EMR", "QuickSight")),
    ("Networking", ("Load Balancing", "Virtual Private Cloud", "CloudFront", "Route 53", "Data Transfer")),
    ("Networking", ("Direct Connect", "Global Accelerator", "NAT Gateway")),
    ("Management and Governance", ("CloudWatch", "CloudTrail", "Config", "Systems Manager", "Cost Explorer")),
    ("Security", ("Key Management", "Secrets Manager", "GuardDuty", "WAF", "Security Hub", "Shield", "Inspector")),
    ("Integration", ("Simple Notification", "Simple Queue", "EventBridge", "Step Functions", "MQ")),
    ("AI and Machine Learning", ("SageMaker", "Bedrock", "Rekognition", "Textract", "Comprehend", "Transcribe")),
]  # fmt: skip


def service_category(arr: pa.Array) -> pa.Array:
    text = as_text(arr)
    values = {}
    for name in pc.unique(text).to_pylist():
        if name is None:
            continue
        values[name] = next((cat for cat, words in SERVICE_WORDS if any(w in name for w in words)), "Other")
    keys = pa.array(list(values), pa.string())
    return pc.take(pa.array(list(values.values()), pa.string()), pc.index_in(text, value_set=keys))


def charge_category(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(pc.equal(as_text(arr), "Tax"), False), pa.scalar("Tax"), pa.scalar("Usage"))


def charge_description(service, estimated) -> pa.Array:
    flagged = pc.fill_null(pc.equal(as_text(estimated), "true"), False)
    return pc.if_else(
        flagged,
        pc.binary_join_element_wise(as_text(service), " (Cost Explorer, estimated)", ""),
        pc.binary_join_element_wise(as_text(service), " (Cost Explorer)", ""),
    )


COST_EXPLORER = ColumnMapping(
    "AWS Cost Explorer GetCostAndUsage (DAILY, SERVICE x LINKED_ACCOUNT or SERVICE x REGION)",
    [
        Rule("BilledCost", "UnblendedCost", required=True),
        Rule(
            "BillingAccountId",
            "billing_account_id",
            how="the account's external_id, else sts:GetCallerIdentity's Account",
            fn=lambda a: a,
        ),
        Rule("BillingCurrency", "Unit", required=True),
        Rule("BillingPeriodEnd", "billing_period_end", fn=lambda a: a, how="the first day of the next month"),
        Rule("BillingPeriodStart", "billing_period_start", fn=lambda a: a, how="the first day of the day's month"),
        Rule(
            "ChargeCategory",
            "SERVICE",
            fn=charge_category,
            how="Tax for the SERVICE 'Tax', else Usage (Cost Explorer does not split credits, refunds or "
            "purchases from usage in this grouping)",
        ),
        Rule(
            "ChargeDescription",
            ("SERVICE", "Estimated"),
            fn=charge_description,
            how="the service name, marked estimated when Cost Explorer says the day is not final",
        ),
        Rule("ChargeFrequency", const="Usage-Based"),
        Rule("ChargePeriodEnd", "TimePeriod.End"),
        Rule("ChargePeriodStart", "TimePeriod.Start"),
        Rule(
            "ContractedCost",
            ("NetUnblendedCost", "UnblendedCost"),
            fn=coalesce,
            how="NetUnblendedCost, else UnblendedCost",
        ),
        Rule(
            "EffectiveCost",
            ("AmortizedCost", "UnblendedCost"),
            fn=coalesce,
            how="AmortizedCost (commitments spread over their usage), else UnblendedCost",
        ),
        Rule("InvoiceIssuerName", const="Amazon Web Services, Inc."),
        Rule(
            "ListCost",
            "UnblendedCost",
            fn=lambda a: a,
            how="UnblendedCost: Cost Explorer has no public on-demand price, so ListCost equals BilledCost",
        ),
        Rule("ProviderName", const="AWS"),
        Rule("PublisherName", const="Amazon Web Services, Inc."),
        Rule(
            "ServiceCategory",
            "SERVICE",
            fn=service_category,
            how="by the words of the service name (Compute Cloud, EC2, Lambda -> Compute; Simple Storage, "
            "Backup -> Storage; Relational Database, DynamoDB -> Databases; Load Balancing, Virtual Private "
            "Cloud -> Networking; CloudWatch -> Management and Governance; ...); else Other",
        ),
        Rule("ServiceName", "SERVICE"),
        Rule(
            "RegionId",
            "REGION",
            fn=lambda a: a,
            how="the REGION group key when settings cost_explorer_group_by is REGION ('NoRegion' -> empty); else empty",
        ),
        Rule(
            "SubAccountId",
            "LINKED_ACCOUNT",
            fn=lambda a: a,
            how="the LINKED_ACCOUNT group key; empty when grouped by REGION (Cost Explorer then sums the linked "
            "accounts together)",
        ),
    ],
)


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


class CostExplorerSource(CostSource):
    def __init__(self, account, context: AwsContext | None = None, today: date | None = None):
        super().__init__(account)
        self.context = context or AwsContext(account)
        self.today = today or datetime.now(UTC).date()

    def window(self, billing_period: str | None) -> tuple[date, date]:
        """[start, end) of the days to ask for; End is exclusive and never after today."""
        if billing_period:
            start = date(int(billing_period[:4]), int(billing_period[5:7]), 1)
            end = min(_next_month(start), self.today)
        else:
            start = _month_start(self.today)
            for _ in range(self.context.settings.cost_explorer_months - 1):
                start = _month_start(start - timedelta(days=1))
            end = self.today
        if end <= start:  # the first day of a month: nothing of it is known yet
            end = start + timedelta(days=1)
        return start, end

    def billing_account_id(self) -> str:
        if self.account.external_id:
            return self.account.external_id
        sts = self.context.client("sts")
        with aws_errors("sts:GetCallerIdentity"):
            return sts.get_caller_identity()["Account"]

    def pages(self, start: date, end: date) -> Iterator[dict]:
        ce = self.context.client("ce", region="us-east-1")
        kwargs = {
            "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
            "Granularity": "DAILY",
            "Metrics": METRICS,
            "GroupBy": [
                {"Type": "DIMENSION", "Key": "SERVICE"},
                {"Type": "DIMENSION", "Key": self.context.settings.cost_explorer_group_by},
            ],
        }
        seen = set()
        while True:
            with aws_errors("ce:GetCostAndUsage"):
                page = ce.get_cost_and_usage(**kwargs)
            yield page
            token = page.get("NextPageToken")
            if not token or token in seen:
                return
            seen.add(token)
            kwargs["NextPageToken"] = token

    def rows(self, start: date, end: date) -> dict[str, list[dict]]:
        """Billing period -> the response's rows (CE_FIELDS) of its days."""
        account_id = self.billing_account_id()
        by_account = self.context.settings.cost_explorer_group_by == "LINKED_ACCOUNT"
        by_period: dict[str, list[dict]] = {}
        for page in self.pages(start, end):
            for result in page.get("ResultsByTime", []):
                day_start = result["TimePeriod"]["Start"]
                day = date.fromisoformat(day_start[:10])
                period_start = _month_start(day)
                groups = result.get("Groups") or []
                if not groups and result.get("Total"):
                    groups = [{"Keys": ["", ""], "Metrics": result["Total"]}]
                for group in groups:
                    keys = list(group.get("Keys") or []) + ["", ""]
                    metrics = group.get("Metrics") or {}
                    cost = metrics.get("UnblendedCost") or {}
                    if not cost:
                        raise PermanentError(
                            f"ce:GetCostAndUsage answered a group without UnblendedCost on {day_start}: {keys[:2]}"
                        )
                    by_period.setdefault(period_start.strftime("%Y-%m"), []).append(
                        {
                            "TimePeriod.Start": day_start[:10],
                            "TimePeriod.End": result["TimePeriod"]["End"][:10],
                            "billing_period_start": period_start.isoformat(),
                            "billing_period_end": _next_month(period_start).isoformat(),
                            "billing_account_id": account_id,
                            "SERVICE": keys[0] or "Unknown",
                            "LINKED_ACCOUNT": (keys[1] or account_id) if by_account else None,
                            "REGION": None if by_account or keys[1] in ("", "NoRegion") else keys[1],
                            "UnblendedCost": cost.get("Amount"),
                            "AmortizedCost": (metrics.get("AmortizedCost") or {}).get("Amount"),
                            "NetUnblendedCost": (metrics.get("NetUnblendedCost") or {}).get("Amount"),
                            "UsageQuantity": (metrics.get("UsageQuantity") or {}).get("Amount"),
                            "Unit": cost.get("Unit"),
                            "Estimated": "true" if result.get("Estimated") else "false",
                        }
                    )
        return by_period

    def batches(self, *, billing_period: str | None = None) -> Iterator[CostBatch]:
        start, end = self.window(billing_period)
        for period, rows in sorted(self.rows(start, end).items()):
            if billing_period and period != billing_period:
                continue
            fingerprint = hashlib.sha256((COST_EXPLORER.name + json.dumps(rows, sort_keys=True)).encode()).hexdigest()
            if self.known_fingerprints.get(period) == fingerprint:
                self.unchanged_periods.append(period)
                continue
            self.fingerprints[period] = fingerprint
            name = f"ce:GetCostAndUsage {period}"
            self.files.append(name)
            raw = pa.table({field: pa.array([r[field] for r in rows], pa.string()) for field in CE_FIELDS})
            self.rows_read += raw.num_rows
            table = normalise(COST_EXPLORER.apply(raw), file=name, first_row=1, report=self.report)
            if not self.report.has_errors:
                yield CostBatch(name, 1, table, {period: table.num_rows})

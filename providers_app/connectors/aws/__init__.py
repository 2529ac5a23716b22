"""The AWS connector: cost data from a CUR 2.0 / Data Exports (or legacy CUR, or FOCUS 1.2) delivery in S3, or
from Cost Explorer; the inventory from EC2, ELB, RDS, S3 and CloudWatch; a connection check. boto3 throughout.

Account settings (`CloudAccount.settings`, JSON):

    {
      "source": "export",                # or "cost_explorer" (no export: GetCostAndUsage, see cost_explorer.py)
      "bucket": "acme-billing",          # export bucket (source "export")
      "prefix": "cur",                   # the export's S3 path prefix ("" for none)
      "export_name": "finops",           # the Data Exports export name / legacy CUR report name
      "layout": "auto",                  # "data_exports" | "legacy_cur" | "auto" (Data Exports first)
      "table": "auto",                   # "cur" | "focus" | "auto" (from the manifest's columns)
      "format": "auto",                  # "csv" (CSV, CSV.gz) | "parquet" | "auto" (by each file's name)
      "regions": ["us-east-1", "eu-west-1"],   # inventory regions
      "region": "us-east-1",             # bucket / STS region (default: the first inventory region)
      "cpu_lookback_days": 14,           # CloudWatch look-back for cpu_hourly and request_count_daily
      "cost_explorer_months": 3,         # months Cost Explorer is asked for (source "cost_explorer")
      "cost_explorer_group_by": "LINKED_ACCOUNT",  # or "REGION": Cost Explorer's GroupBy next to SERVICE
      "endpoint_url": "http://127.0.0.1:5000",  # optional: every service at one endpoint (moto, S3-compatible)
      "endpoint_urls": {"s3": "..."}     # optional: per service
    }

Credential (`Credential` secret, JSON), one of:

    {"access_key_id": "AKIA…", "secret_access_key": "…"}                      an IAM user's key pair
    {"access_key_id": …, "secret_access_key": …, "session_token": "…"}        temporary credentials
    {"role_arn": "arn:aws:iam::123456789012:role/finops", "external_id": "…",
     "access_key_id": …, "secret_access_key": …}                               sts:AssumeRole from a key pair
    {"role_arn": "…", "external_id": "…"}                                      sts:AssumeRole from the worker's
                                                                               default chain (instance profile)

The `aws_access_key_id` / `aws_secret_access_key` / `aws_session_token` spellings are accepted too. With no
credential at all the worker's default chain is used. Secrets are never logged or put in error messages.
"""

from __future__ import annotations

from finops.errors import PermanentError, TransientError

from ..base import ConnectionReport, CostSource, ResourceSource
from .session import AwsContext, aws_errors, bucket_arn


def cost_source(account) -> CostSource:
    context = AwsContext(account)
    if context.settings.source == "cost_explorer":
        from .cost_explorer import CostExplorerSource

        return CostExplorerSource(account, context)
    from .cur import S3ExportSource

    return S3ExportSource(account, context)


def resource_source(account) -> ResourceSource:
    from .resources import AwsResourceSource

    return AwsResourceSource(account, AwsContext(account))


def connection_check(account) -> ConnectionReport:
    """Credentials, the export (or Cost Explorer), and inventory access, in the order sync and discovery use them."""
    report = ConnectionReport(provider="aws", account=account.name)
    try:
        context = AwsContext(account)
    except PermanentError as exc:
        report.failed("settings and credential", str(exc))
        return report
    report.passed("settings and credential", f"{context.credentials.kind}, source {context.settings.source}")
    steps = [_credentials]
    steps.append(_export if context.settings.source == "export" else _cost_explorer)
    steps.append(_inventory)
    for step in steps:
        try:
            if not step(context, report):
                return report
        except (PermanentError, TransientError) as exc:
            report.failed(getattr(step, "check_name", step.__name__.strip("_")), str(exc))
            return report
    return report


def _credentials(context: AwsContext, report: ConnectionReport) -> bool:
    if context.credentials.role_arn:
        context.session  # noqa: B018  (assumes the role; raises naming sts:AssumeRole)
        report.passed("sts:AssumeRole", context.credentials.role_arn)
    with aws_errors("sts:GetCallerIdentity"):
        identity = context.client("sts").get_caller_identity()
    report.passed("credentials", f"account {identity.get('Account')} as {identity.get('Arn')}")
    return True


_credentials.check_name = "credentials"


def _export(context: AwsContext, report: ConnectionReport) -> bool:
    from .cur import S3ExportSource

    s = context.settings
    source = S3ExportSource(context.account, context)
    name = f"s3:ListBucket on {bucket_arn(s.bucket)}"
    try:
        objects = source.objects()
    except PermanentError as exc:
        report.failed(name, str(exc))
        return False
    report.passed(name, f"{len(objects)} object(s) under {source.root}")
    manifests = source.manifests(objects)
    if not manifests:
        report.failed(
            "export manifest",
            f"no export yet: no {s.export_name}-Manifest.json under s3://{s.bucket}/{source.root} "
            "(metadata/BILLING_PERIOD=YYYY-MM/ for Data Exports, YYYYMMDD-YYYYMMDD/ for legacy CUR); "
            "the first delivery can take up to 24 hours after the export is created",
        )
        return False
    newest = max(manifests)
    key = manifests[newest]
    try:
        files = source.manifest_files(key, source.read_manifest(key))
    except PermanentError as exc:
        report.failed(f"s3:GetObject on {bucket_arn(s.bucket, key)}", str(exc))
        return False
    report.passed("export manifest", f"{len(manifests)} billing period(s), newest {newest}: {len(files)} file(s)")
    return True


def _cost_explorer(context: AwsContext, report: ConnectionReport) -> bool:
    from datetime import date, timedelta

    ce = context.client("ce", region="us-east-1")
    today = date.today()
    with aws_errors("ce:GetCostAndUsage"):
        ce.get_cost_and_usage(
            TimePeriod={"Start": (today - timedelta(days=1)).isoformat(), "End": today.isoformat()},
            Granularity="DAILY",
            Metrics=["UnblendedCost"],
        )
    report.passed("ce:GetCostAndUsage", "Cost Explorer answers")
    return True


_cost_explorer.check_name = "ce:GetCostAndUsage"


def _inventory(context: AwsContext, report: ConnectionReport) -> bool:
    region = context.settings.regions[0]
    ec2 = context.client("ec2", region)
    try:
        with aws_errors("ec2:DescribeRegions"):
            enabled = {r["RegionName"] for r in ec2.describe_regions().get("Regions", [])}
    except PermanentError as exc:
        report.failed("ec2:DescribeRegions", str(exc))
        return False
    unknown = [r for r in context.settings.regions if enabled and r not in enabled]
    if unknown:
        report.failed("ec2:DescribeRegions", f"settings.regions not enabled for this account: {', '.join(unknown)}")
        return False
    report.passed("ec2:DescribeRegions", f"{len(enabled)} region(s) enabled")
    try:
        with aws_errors("ec2:DescribeInstances", f"region {region}"):
            ec2.describe_instances(MaxResults=5)
    except PermanentError as exc:
        report.failed("ec2:DescribeInstances", str(exc))
        return False
    report.passed("ec2:DescribeInstances", f"region {region}")
    return True

"""The AWS inventory of an account: EC2 instances, EBS volumes and snapshots, Elastic IPs, load balancers
(ALB/NLB/GWLB and classic), RDS instances per region in settings.regions, and S3 buckets (global), with the
attributes of the resource contract (providers_app.connectors.base.RESOURCE_ATTRIBUTES).

resource_id is what CUR puts in line_item_resource_id for the resource's charges:
instance id (i-…), volume id (vol-…), snapshot id (snap-…), Elastic IP allocation id (eipalloc-…), the load
balancer's ARN (classic ones too: arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/NAME), the RDS
instance's ARN (arn:aws:rds:REGION:ACCOUNT:db:NAME) and the bucket name.

CloudWatch: hourly average CPUUtilization of instances (AWS/EC2) and RDS instances (AWS/RDS) over
settings.cpu_lookback_days, and daily RequestCount sums of load balancers (AWS/ApplicationELB, AWS/ELB), all
fetched with GetMetricData in batches of up to 500 queries per call, not one call per resource.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from ..base import ResourceSource
from .session import AwsContext, aws_errors

METRIC_QUERIES_PER_CALL = 500
STOPPED_AT_RE = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:GMT|UTC)\)")
SERVICE = {
    "instance": "Amazon Elastic Compute Cloud",
    "volume": "Amazon Elastic Compute Cloud",
    "snapshot": "Amazon Elastic Compute Cloud",
    "ip_address": "Amazon Elastic Compute Cloud",
    "load_balancer": "Elastic Load Balancing",
    "database": "Amazon Relational Database Service",
    "bucket": "Amazon Simple Storage Service",
}


def iso(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def tag_dict(tags) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags or [] if "Key" in t}


def stopped_at(instance: dict) -> str:
    """When an instance was stopped: EC2 says it only in StateTransitionReason, "User initiated (… GMT)"."""
    match = STOPPED_AT_RE.search(instance.get("StateTransitionReason") or "")
    if not match:
        return ""
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


class AwsResourceSource(ResourceSource):
    def __init__(self, account, context: AwsContext | None = None, now: datetime | None = None):
        super().__init__(account)
        self.context = context or AwsContext(account)
        self.now = now or datetime.now(UTC)

    def resources(self) -> Iterator[dict]:
        for region in self.context.settings.regions:
            yield from self.region_resources(region)
        yield from self.buckets()

    def region_resources(self, region: str) -> list[dict]:
        items = [
            *self.instances(region),
            *self.volumes(region),
            *self.snapshots(region),
            *self.addresses(region),
            *self.load_balancers(region),
            *self.databases(region),
        ]
        self.metrics_attach(region, items)
        return items

    # --- EC2 ---

    def _paginate(self, service: str, region: str, operation: str, action: str, key: str, **kwargs) -> Iterator[dict]:
        client = self.context.client(service, region)
        with aws_errors(action, f"region {region}"):
            for page in client.get_paginator(operation).paginate(**kwargs):
                yield from page.get(key, [])

    def instances(self, region: str) -> Iterator[dict]:
        for reservation in self._paginate("ec2", region, "describe_instances", "ec2:DescribeInstances", "Reservations"):
            for instance in reservation.get("Instances", []):
                state = instance.get("State", {}).get("Name", "")
                if state in ("terminated", "shutting-down"):
                    continue  # gone: the inventory marks it terminated
                tags = tag_dict(instance.get("Tags"))
                attributes = {
                    "created_at": iso(instance.get("LaunchTime")),
                    "instance_type": instance.get("InstanceType", ""),
                    "attached_volume_ids": [
                        m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m
                    ],
                    "availability_zone": instance.get("Placement", {}).get("AvailabilityZone", ""),
                }
                if state == "stopped" and stopped_at(instance):
                    attributes["stopped_at"] = stopped_at(instance)
                yield self._item("instance", instance["InstanceId"], region, tags, state, attributes)

    def volumes(self, region: str) -> Iterator[dict]:
        for volume in self._paginate("ec2", region, "describe_volumes", "ec2:DescribeVolumes", "Volumes"):
            attributes = {
                "created_at": iso(volume.get("CreateTime")),
                "size_gb": volume.get("Size"),
                "volume_type": volume.get("VolumeType", ""),
                "attached_to": [a["InstanceId"] for a in volume.get("Attachments", []) if a.get("InstanceId")],
                "availability_zone": volume.get("AvailabilityZone", ""),
            }
            yield self._item(
                "volume", volume["VolumeId"], region, tag_dict(volume.get("Tags")), volume.get("State", ""), attributes
            )

    def snapshots(self, region: str) -> Iterator[dict]:
        for snap in self._paginate(
            "ec2", region, "describe_snapshots", "ec2:DescribeSnapshots", "Snapshots", OwnerIds=["self"]
        ):
            volume_id = snap.get("VolumeId") or ""
            attributes = {
                "created_at": iso(snap.get("StartTime")),
                "size_gb": snap.get("VolumeSize"),
                # AWS puts vol-ffffffff for snapshots copied or made from an AMI: the source is unknown.
                "source_volume_id": "" if volume_id == "vol-ffffffff" else volume_id,
            }
            yield self._item(
                "snapshot", snap["SnapshotId"], region, tag_dict(snap.get("Tags")), snap.get("State", ""), attributes
            )

    def addresses(self, region: str) -> Iterator[dict]:
        ec2 = self.context.client("ec2", region)
        with aws_errors("ec2:DescribeAddresses", f"region {region}"):
            addresses = ec2.describe_addresses().get("Addresses", [])
        for address in addresses:
            rid = address.get("AllocationId") or address.get("PublicIp")
            associated = address.get("InstanceId") or address.get("NetworkInterfaceId") or ""
            attributes = {
                "created_at": "",  # DescribeAddresses does not say when an address was allocated
                "address": address.get("PublicIp", ""),
                "associated_with": associated,
                "association_id": address.get("AssociationId", ""),
            }
            state = "in-use" if address.get("AssociationId") or associated else "available"
            yield self._item("ip_address", rid, region, tag_dict(address.get("Tags")), state, attributes)

    # --- load balancers ---

    def load_balancers(self, region: str) -> Iterator[dict]:
        elbv2 = self.context.client("elbv2", region)
        balancers = list(
            self._paginate(
                "elbv2",
                region,
                "describe_load_balancers",
                "elasticloadbalancing:DescribeLoadBalancers",
                "LoadBalancers",
            )
        )
        arns = [lb["LoadBalancerArn"] for lb in balancers]
        tags: dict[str, dict] = {}
        for i in range(0, len(arns), 20):  # DescribeTags takes 20 ARNs at a time
            with aws_errors("elasticloadbalancing:DescribeTags", f"region {region}"):
                for desc in elbv2.describe_tags(ResourceArns=arns[i : i + 20]).get("TagDescriptions", []):
                    tags[desc["ResourceArn"]] = tag_dict(desc.get("Tags"))
        for lb in balancers:
            arn = lb["LoadBalancerArn"]
            targets = 0
            with aws_errors("elasticloadbalancing:DescribeTargetGroups", arn):
                groups = elbv2.describe_target_groups(LoadBalancerArn=arn).get("TargetGroups", [])
            for group in groups:
                with aws_errors("elasticloadbalancing:DescribeTargetHealth", group["TargetGroupArn"]):
                    targets += len(
                        elbv2.describe_target_health(TargetGroupArn=group["TargetGroupArn"]).get(
                            "TargetHealthDescriptions", []
                        )
                    )
            attributes = {
                "created_at": iso(lb.get("CreatedTime")),
                "lb_type": lb.get("Type", ""),
                "target_count": targets,
                "dns_name": lb.get("DNSName", ""),
                "_metric": ("AWS/ApplicationELB", "LoadBalancer", arn.split(":loadbalancer/", 1)[-1])
                if lb.get("Type") == "application"
                else None,
            }
            item = self._item(
                "load_balancer", arn, region, tags.get(arn, {}), lb.get("State", {}).get("Code", ""), attributes
            )
            item["name"] = lb.get("LoadBalancerName", "")
            yield item
        yield from self.classic_load_balancers(region)

    def classic_load_balancers(self, region: str) -> Iterator[dict]:
        balancers = list(
            self._paginate(
                "elb",
                region,
                "describe_load_balancers",
                "elasticloadbalancing:DescribeLoadBalancers",
                "LoadBalancerDescriptions",
            )
        )
        if not balancers:
            return
        account_id = self.account_id()
        elb = self.context.client("elb", region)
        names = [lb["LoadBalancerName"] for lb in balancers]
        tags: dict[str, dict] = {}
        for i in range(0, len(names), 20):
            with aws_errors("elasticloadbalancing:DescribeTags", f"region {region}"):
                for desc in elb.describe_tags(LoadBalancerNames=names[i : i + 20]).get("TagDescriptions", []):
                    tags[desc["LoadBalancerName"]] = tag_dict(desc.get("Tags"))
        for lb in balancers:
            name = lb["LoadBalancerName"]
            arn = f"arn:aws:elasticloadbalancing:{region}:{account_id}:loadbalancer/{name}"
            attributes = {
                "created_at": iso(lb.get("CreatedTime")),
                "lb_type": "classic",
                "target_count": len(lb.get("Instances", [])),
                "dns_name": lb.get("DNSName", ""),
                "_metric": ("AWS/ELB", "LoadBalancerName", name),
            }
            item = self._item("load_balancer", arn, region, tags.get(name, {}), "active", attributes)
            item["name"] = name
            yield item

    def account_id(self) -> str:
        if self.account.external_id:
            return self.account.external_id
        if not hasattr(self, "_account_id"):
            with aws_errors("sts:GetCallerIdentity"):
                self._account_id = self.context.client("sts").get_caller_identity()["Account"]
        return self._account_id

    # --- RDS ---

    def databases(self, region: str) -> Iterator[dict]:
        for db in self._paginate("rds", region, "describe_db_instances", "rds:DescribeDBInstances", "DBInstances"):
            attributes = {
                "created_at": iso(db.get("InstanceCreateTime")),
                "instance_class": db.get("DBInstanceClass", ""),
                "engine": db.get("Engine", ""),
                "allocated_storage_gb": db.get("AllocatedStorage"),
                "multi_az": bool(db.get("MultiAZ")),
            }
            item = self._item(
                "database",
                db["DBInstanceArn"],
                region,
                tag_dict(db.get("TagList")),
                db.get("DBInstanceStatus", ""),
                attributes,
            )
            item["name"] = db.get("DBInstanceIdentifier", "")
            yield item

    # --- S3 ---

    def buckets(self) -> Iterator[dict]:
        s3 = self.context.client("s3")
        with aws_errors("s3:ListAllMyBuckets"):
            buckets = s3.list_buckets().get("Buckets", [])
        for bucket in buckets:
            name = bucket["Name"]
            region = bucket.get("BucketRegion") or ""
            if not region:
                with aws_errors("s3:GetBucketLocation", f"arn:aws:s3:::{name}"):
                    region = s3.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
            tags = {}
            try:
                with aws_errors("s3:GetBucketTagging", f"arn:aws:s3:::{name}"):
                    tags = tag_dict(s3.get_bucket_tagging(Bucket=name).get("TagSet"))
            except Exception as exc:  # a bucket without tags answers NoSuchTagSet
                if "NoSuchTagSet" not in str(exc) and "NoSuchTagSetError" not in str(exc):
                    raise
            item = self._item(
                "bucket", name, region, tags, "available", {"created_at": iso(bucket.get("CreationDate"))}
            )
            item["name"] = name
            yield item

    # --- CloudWatch ---

    def metrics_attach(self, region: str, items: list[dict]) -> None:
        """cpu_hourly (+ cpu_hourly_end) on instances and databases, request_count_daily on load balancers."""
        days = self.context.settings.cpu_lookback_days
        end = self.now.replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=days)
        queries, owners = [], {}
        for n, item in enumerate(items):
            kind = item["resource_type"]
            if kind == "instance":
                spec = ("AWS/EC2", "CPUUtilization", "InstanceId", item["resource_id"], 3600, "Average")
            elif kind == "database":
                spec = ("AWS/RDS", "CPUUtilization", "DBInstanceIdentifier", item["name"], 3600, "Average")
            elif kind == "load_balancer" and item["attributes"].get("_metric"):
                namespace, dimension, value = item["attributes"]["_metric"]
                spec = (namespace, "RequestCount", dimension, value, 86400, "Sum")
            else:
                continue
            qid = f"m{n}"
            owners[qid] = item
            namespace, metric, dimension, value, period, stat = spec
            queries.append(
                {
                    "Id": qid,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": namespace,
                            "MetricName": metric,
                            "Dimensions": [{"Name": dimension, "Value": value}],
                        },
                        "Period": period,
                        "Stat": stat,
                    },
                    "ReturnData": True,
                }
            )
        for item in items:
            item["attributes"].pop("_metric", None)
        if not queries:
            return
        cloudwatch = self.context.client("cloudwatch", region)
        series: dict[str, dict[datetime, float]] = {}
        for i in range(0, len(queries), METRIC_QUERIES_PER_CALL):
            kwargs = {
                "MetricDataQueries": queries[i : i + METRIC_QUERIES_PER_CALL],
                "StartTime": start,
                "EndTime": end,
                "ScanBy": "TimestampAscending",
            }
            while True:
                with aws_errors("cloudwatch:GetMetricData", f"region {region}"):
                    page = cloudwatch.get_metric_data(**kwargs)
                for result in page.get("MetricDataResults", []):
                    points = series.setdefault(result["Id"], {})
                    for ts, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=False):
                        points[ts.astimezone(UTC)] = value
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        for qid, item in owners.items():
            points = series.get(qid) or {}
            if item["resource_type"] == "load_balancer":
                item["attributes"]["request_count_daily"] = _grid(points, start, end, timedelta(days=1), fill=0.0)
                continue
            hourly = _grid(points, start, end, timedelta(hours=1), fill=None)
            # From the first hour CloudWatch has data: a young instance has a short series, not leading gaps.
            while hourly and hourly[0] is None:
                hourly.pop(0)
            while hourly and hourly[-1] is None:
                hourly.pop()
            item["attributes"]["cpu_hourly"] = [None if v is None else round(v, 3) for v in hourly]
            if hourly:
                last = max(ts for ts in points if start <= ts < end)
                item["attributes"]["cpu_hourly_end"] = iso(last + timedelta(hours=1))

    def _item(self, kind: str, rid: str, region: str, tags: dict, state: str, attributes: dict) -> dict:
        return {
            "resource_id": rid,
            "resource_type": kind,
            "service_name": SERVICE[kind],
            "region": region,
            "name": tags.get("Name", ""),
            "state": (state or "").lower(),
            "tags": tags,
            "attributes": attributes,
        }


def _grid(points: dict[datetime, float], start: datetime, end: datetime, step: timedelta, fill):
    """Values on the step grid from start to end (oldest first); `fill` where CloudWatch has no point."""
    out = []
    at = start
    while at < end:
        out.append(points.get(at, fill))
        at += step
    return out

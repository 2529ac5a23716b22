"""The AWS inventory against moto: resources created through boto3, CPU put into CloudWatch, listed with the
resource contract's attributes and ids that join CUR's line_item_resource_id."""

from datetime import UTC, datetime, timedelta

import pytest

from providers_app.connectors.aws import resource_source
from providers_app.connectors.base import RESOURCE_ATTRIBUTES
from providers_app.models import Credential
from tests.factories import CloudAccountFactory
from tests.providers_app.aws.conftest import ACCOUNT_ID, KEYS

pytestmark = pytest.mark.django_db


def make_estate(moto, region="us-east-1") -> dict:
    """Two instances (one stopped), an unattached and an attached volume, a snapshot, two Elastic IPs (one
    associated), an ALB with two targets, a classic ELB, an RDS instance and a bucket; hourly CPU for 6 hours."""
    ec2 = moto.client("ec2", region)
    image = ec2.register_image(Name="finops-base", RootDeviceName="/dev/sda1")["ImageId"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24", AvailabilityZone=f"{region}{zone}")["Subnet"][
            "SubnetId"
        ]
        for n, zone in ((1, "a"), (2, "b"))
    ]
    tag = {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}, {"Key": "team", "Value": "core"}]}
    running, stopped = [
        i["InstanceId"]
        for i in ec2.run_instances(
            ImageId=image, MinCount=2, MaxCount=2, InstanceType="m5.large", SubnetId=subnets[0], TagSpecifications=[tag]
        )["Instances"]
    ]
    idle = ec2.create_volume(AvailabilityZone=f"{region}a", Size=100, VolumeType="gp3")["VolumeId"]
    used = ec2.create_volume(AvailabilityZone=f"{region}a", Size=20, VolumeType="gp2")["VolumeId"]
    ec2.attach_volume(VolumeId=used, InstanceId=running, Device="/dev/sdf")
    snapshot = ec2.create_snapshot(VolumeId=idle, Description="nightly")["SnapshotId"]
    free_ip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    bound_ip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=bound_ip, InstanceId=running)

    elbv2 = moto.client("elbv2", region)
    lb = elbv2.create_load_balancer(Name="front", Subnets=subnets, Type="application")["LoadBalancers"][0]
    group = elbv2.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance")
    group_arn = group["TargetGroups"][0]["TargetGroupArn"]
    elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group_arn}],
    )  # fmt: skip
    elbv2.register_targets(TargetGroupArn=group_arn, Targets=[{"Id": running}, {"Id": stopped}])
    ec2.stop_instances(InstanceIds=[stopped])
    moto.client("elb", region).create_load_balancer(
        LoadBalancerName="legacy",
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}],
        AvailabilityZones=[f"{region}a"],
    )
    rds = moto.client("rds", region)
    db = rds.create_db_instance(
        DBInstanceIdentifier="orders", DBInstanceClass="db.m5.large", Engine="postgres", MasterUsername="finops",
        MasterUserPassword="not-a-secret-1", AllocatedStorage=50, Tags=[{"Key": "team", "Value": "data"}],
    )["DBInstance"]  # fmt: skip
    s3 = moto.client("s3", region)
    s3.create_bucket(Bucket="acme-logs")
    s3.put_bucket_tagging(Bucket="acme-logs", Tagging={"TagSet": [{"Key": "team", "Value": "core"}]})

    cloudwatch = moto.client("cloudwatch", region)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hours = [now - timedelta(hours=h) for h in range(6, 0, -1)]  # the six full hours before this one
    for n, hour in enumerate(hours):
        cloudwatch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                # two samples in the hour: the hourly average is their mean
                {"MetricName": "CPUUtilization", "Dimensions": [{"Name": "InstanceId", "Value": running}],
                 "Timestamp": hour + timedelta(minutes=m), "Value": value, "Unit": "Percent"}
                for m, value in ((5, 2.0 + n), (35, 4.0 + n))
            ],
        )  # fmt: skip
        cloudwatch.put_metric_data(
            Namespace="AWS/RDS",
            MetricData=[{"MetricName": "CPUUtilization",
                         "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": "orders"}],
                         "Timestamp": hour + timedelta(minutes=10), "Value": 50.0, "Unit": "Percent"}],
        )  # fmt: skip
    lb_dimension = lb["LoadBalancerArn"].split(":loadbalancer/", 1)[1]
    cloudwatch.put_metric_data(
        Namespace="AWS/ApplicationELB",
        MetricData=[{"MetricName": "RequestCount", "Dimensions": [{"Name": "LoadBalancer", "Value": lb_dimension}],
                     "Timestamp": hours[0], "Value": 1200.0, "Unit": "Count"}],
    )  # fmt: skip
    return {
        "running": running, "stopped": stopped, "idle_volume": idle, "used_volume": used, "snapshot": snapshot,
        "free_ip": free_ip, "bound_ip": bound_ip, "lb_arn": lb["LoadBalancerArn"], "db_arn": db["DBInstanceArn"],
        "hours": hours,
    }  # fmt: skip


def aws_account(moto, **settings):
    account = CloudAccountFactory(
        provider="aws",
        name="acme-aws",
        external_id=ACCOUNT_ID,
        settings={"source": "cost_explorer", "regions": ["us-east-1"], "endpoint_url": moto.url, **settings},
    )
    credential = Credential(account=account, kind="access_key")
    credential.set_secret(KEYS)
    credential.save()
    return account


def test_inventory_lists_every_kind_with_the_contract_attributes_and_cloudwatch_cpu(moto):
    estate = make_estate(moto)
    listed = list(resource_source(aws_account(moto, cpu_lookback_days=1)).resources())
    items = {item["resource_id"]: item for item in listed}
    # 2 instances, their 2 root volumes + 2 volumes, 2 snapshots (ours and the registered AMI's), 2 addresses,
    # 2 load balancers, 1 database, 1 bucket
    counts = {}
    for item in listed:
        counts[item["resource_type"]] = counts.get(item["resource_type"], 0) + 1
    assert counts == {"instance": 2, "volume": 4, "snapshot": 2, "ip_address": 2, "load_balancer": 2,
                      "database": 1, "bucket": 1}  # fmt: skip
    assert len(items) == len(listed)

    running = items[estate["running"]]
    assert running["resource_type"] == "instance" and running["state"] == "running"
    assert running["name"] == "web" and running["tags"] == {"Name": "web", "team": "core"}
    assert running["service_name"] == "Amazon Elastic Compute Cloud" and running["region"] == "us-east-1"
    attrs = running["attributes"]
    assert attrs["instance_type"] == "m5.large" and estate["used_volume"] in attrs["attached_volume_ids"]
    assert attrs["cpu_hourly"] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # mean of the two samples of each hour
    assert attrs["cpu_hourly_end"] == (estate["hours"][-1] + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert attrs["created_at"].endswith("Z")

    stopped = items[estate["stopped"]]
    assert stopped["state"] == "stopped" and stopped["attributes"]["stopped_at"].endswith("Z")
    assert stopped["attributes"]["cpu_hourly"] == []

    idle, used = items[estate["idle_volume"]], items[estate["used_volume"]]
    assert (idle["resource_type"], idle["state"], idle["attributes"]["attached_to"]) == ("volume", "available", [])
    assert (idle["attributes"]["size_gb"], idle["attributes"]["volume_type"]) == (100, "gp3")
    assert used["attributes"]["attached_to"] == [estate["running"]] and used["state"] == "in-use"

    snapshot = items[estate["snapshot"]]
    assert snapshot["resource_type"] == "snapshot"
    assert snapshot["attributes"]["source_volume_id"] == estate["idle_volume"]
    assert snapshot["attributes"]["size_gb"] == 100

    free, bound = items[estate["free_ip"]], items[estate["bound_ip"]]
    assert free["resource_id"].startswith("eipalloc-") and free["attributes"]["associated_with"] == ""
    assert bound["attributes"]["associated_with"] == estate["running"] and bound["state"] == "in-use"

    alb = items[estate["lb_arn"]]
    assert alb["resource_type"] == "load_balancer" and alb["attributes"]["lb_type"] == "application"
    assert alb["attributes"]["target_count"] == 2
    assert sum(alb["attributes"]["request_count_daily"]) == 1200.0
    classic = items[f"arn:aws:elasticloadbalancing:us-east-1:{ACCOUNT_ID}:loadbalancer/legacy"]
    assert classic["attributes"]["lb_type"] == "classic" and classic["name"] == "legacy"

    db = items[estate["db_arn"]]
    assert db["resource_id"] == f"arn:aws:rds:us-east-1:{ACCOUNT_ID}:db:orders"
    assert (db["attributes"]["instance_class"], db["attributes"]["engine"]) == ("db.m5.large", "postgres")
    assert db["attributes"]["cpu_hourly"] == [50.0] * 6 and db["tags"] == {"team": "data"}

    bucket = items["acme-logs"]
    assert (bucket["resource_type"], bucket["tags"]) == ("bucket", {"team": "core"})

    for item in items.values():  # every kind carries its contract attributes
        for name in RESOURCE_ATTRIBUTES["*"] + RESOURCE_ATTRIBUTES[item["resource_type"]]:
            if name == "stopped_at" and item["state"] != "stopped":
                continue
            if name == "cpu_hourly_end" and not item["attributes"].get("cpu_hourly"):
                continue
            if name == "request_count_daily" and item["attributes"]["lb_type"] != "application":
                continue
            assert name in item["attributes"], (item["resource_id"], name)

"""Compute Engine inventory (google-cloud-compute, aggregatedList paging) and "test connection", on the local API."""

import pytest
from django.utils import timezone

from costs_app.services.inventory import account_resources_discover
from finops.errors import PermanentError, TransientError
from providers_app.connectors import connection_check
from providers_app.models import Resource

from .conftest import DETAILED_TABLE, INVENTORY_PROJECT, billing_rows
from .google_api import service_account_key
from .test_bigquery import gcp_account

pytestmark = pytest.mark.django_db

WEB_1 = "//compute.googleapis.com/projects/acme-prod/zones/us-central1-a/instances/4121876543210987654"
BATCH = "//compute.googleapis.com/projects/acme-prod/zones/europe-west1-b/instances/7300218765432109876"
ORPHAN = "//compute.googleapis.com/projects/acme-prod/zones/us-central1-a/disks/5550001112223334447"
WEB_1_DISK = "//compute.googleapis.com/projects/acme-prod/zones/us-central1-a/disks/5550001112223334445"


def test_discovery_lists_every_kind_with_the_contract_attributes_and_marks_deleted_ones_terminated(
    api, service_account
):
    # given: the recorded project, listed two items a page (so every aggregatedList is paged), and web-1's
    # hourly CPU utilisation in Cloud Monitoring (a fraction, as the metric is)
    api.cpu[INVENTORY_PROJECT] = {"4121876543210987654": [0.05, 0.5, 0.123456], "999": [0.9]}
    account = gcp_account(api, service_account[0])
    # when
    result = account_resources_discover(account_id=account.id, now=timezone.now())
    # then
    assert (result.resources_seen, result.created, result.terminated) == (9, 9, 0)
    listings = [path for _, path in api.requests if path.endswith("/aggregated/disks")]
    assert len(listings) == 2  # three disks, two a page: the client followed nextPageToken
    by_id = {r.resource_id: r for r in Resource.objects.filter(account=account)}
    web = by_id[WEB_1]
    assert (web.resource_type, web.state, web.region, web.name) == ("instance", "running", "us-central1", "web-1")
    assert web.tags == {"env": "prod", "team": "web"}
    assert web.attributes["instance_type"] == "n2-standard-4"
    assert web.attributes["attached_volume_ids"] == [WEB_1_DISK]
    assert web.attributes["created_at"] == "2024-06-03T16:15:22.512000+00:00"
    assert "stopped_at" not in web.attributes
    assert web.attributes["cpu_hourly"] == [5.0, 50.0, 12.35]
    assert web.attributes["cpu_hourly_end"].endswith(":00:00+00:00")
    batch = by_id[BATCH]
    assert batch.state == "terminated" and batch.attributes["stopped_at"] == "2024-08-03T00:45:10.333000+00:00"
    orphan = by_id[ORPHAN]
    assert (orphan.resource_type, orphan.state) == ("volume", "available")
    assert orphan.attributes == {
        "created_at": "2023-11-20T18:00:00+00:00",
        "size_gb": 500,
        "volume_type": "pd-ssd",
        "attached_to": [],
    }
    assert by_id[WEB_1_DISK].attributes["attached_to"] == [WEB_1]
    snapshot = by_id["//compute.googleapis.com/projects/acme-prod/global/snapshots/8880001112223334441"]
    assert snapshot.attributes["source_volume_id"] == ORPHAN and snapshot.attributes["size_gb"] == 500
    ips = {r.name: r for r in by_id.values() if r.resource_type == "ip_address"}
    assert ips["web-ip"].attributes["associated_with"] == WEB_1 and ips["web-ip"].state == "in_use"
    assert ips["spare-ip"].attributes["associated_with"] == "" and ips["spare-ip"].state == "reserved"
    # the ids join the detailed export's resource.global_name
    assert billing_rows("202409", 1)[0]["resource"]["global_name"] == WEB_1

    # when: the orphan disk is deleted and a new instance created
    data = api.compute[INVENTORY_PROJECT]
    data["disks"] = [d for d in data["disks"] if d["name"] != "orphan-data"]
    new = dict(data["instances"][0], id="999", name="web-2", selfLink=data["instances"][0]["selfLink"][:-1] + "2")
    data["instances"].append(new)
    again = account_resources_discover(account_id=account.id, now=timezone.now())
    # then
    assert (again.created, again.terminated) == (1, 1)
    gone = Resource.objects.get(account=account, resource_id=ORPHAN)
    assert gone.is_terminated and gone.state == "terminated"
    assert (
        Resource.objects.get(
            account=account, resource_id="//compute.googleapis.com/projects/acme-prod/zones/us-central1-a/instances/999"
        ).name
        == "web-2"
    )


def test_without_the_monitoring_permission_instances_are_listed_without_cpu(api, service_account):
    api.cpu[INVENTORY_PROJECT] = {"4121876543210987654": [0.5]}
    api.deny("monitoring.timeSeries.list")
    account = gcp_account(api, service_account[0])
    account_resources_discover(account_id=account.id, now=timezone.now())
    assert "cpu_hourly" not in Resource.objects.get(account=account, resource_id=WEB_1).attributes


def test_a_listing_that_fails_changes_nothing(api, service_account):
    account = gcp_account(api, service_account[0])
    account_resources_discover(account_id=account.id, now=timezone.now())
    api.deny("compute.disks.list")
    with pytest.raises(PermanentError, match=r"missing permission compute\.disks\.list"):
        account_resources_discover(account_id=account.id, now=timezone.now())
    api.reset_faults()
    api.fail("/aggregated/addresses", 1, status=503)
    with pytest.raises(TransientError, match="ServiceUnavailable"):
        account_resources_discover(account_id=account.id, now=timezone.now())
    assert not Resource.objects.filter(account=account, is_terminated=True).exists()


def test_connection_check_passes_and_names_each_problem(api, service_account):
    account = gcp_account(api, service_account[0])
    # no export yet
    report = connection_check(account)
    assert [c.ok for c in report.checks] == [True, False, True]
    assert "not found: no export yet" in report.checks[1].detail
    # all good
    api.table_put(DETAILED_TABLE, "billing_export_resource_v1_schema.json", billing_rows("202409", 2))
    report = connection_check(account)
    assert report.ok, report.summary()
    assert [c.name for c in report.checks] == [
        "credentials",
        f"BigQuery table {DETAILED_TABLE}",
        "compute.instances.list on project acme-prod",
    ]
    # a role without the compute listing
    api.deny("compute.instances.list")
    report = connection_check(account)
    assert report.summary().startswith(
        "acme-gcp: compute.instances.list on project acme-prod failed: compute.instances.list on project acme-prod: "
        "missing permission compute.instances.list"
    )
    api.reset_faults()
    # a wrong key
    info = service_account[0]
    wrong, _ = service_account_key(info["client_email"], info["project_id"], info["token_uri"])
    report = connection_check(gcp_account(api, wrong, name="wrong-key"))
    assert report.summary().startswith("wrong-key: credentials failed:")
    assert "invalid_grant: Invalid JWT Signature." in report.summary()
    assert len(report.checks) == 1


def test_connection_check_of_a_bucket(api, gcs_emulator, service_account):
    from .test_gcs import gcs_account

    report = connection_check(gcs_account(api, gcs_emulator, service_account[0], bucket="nope", name="nope"))
    assert not report.ok
    assert "bucket gs://nope not found" in report.summary()


def test_zones_setting_limits_the_listing(api, service_account):
    account = gcp_account(api, service_account[0], zones=["us-central1-a"])
    account_resources_discover(account_id=account.id, now=timezone.now())
    names = set(Resource.objects.filter(account=account).values_list("resource_type", "name"))
    assert ("instance", "web-1") in names and ("volume", "orphan-data") in names
    assert ("ip_address", "spare-ip") in names  # us-central1: the zone's region
    assert ("instance", "batch-old") not in names and ("volume", "batch-old") not in names

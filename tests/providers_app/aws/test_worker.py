"""The AWS connector through the real task path: accounts made over the API, a real `celery worker` subprocess
running sync_provider_cost_data / discover_provider_resources / check_provider_connection against moto_server,
TaskRun rows as the record. Throttling and connection errors are retried by the platform's policy (a proxy in
front of moto answers SlowDown first); a missing permission is not retried and names the permission."""

import json
import socket
from decimal import Decimal

import pytest
from django.db.models import Sum

from costs_app.models import CostLineItem
from providers_app.models import CloudAccount, Resource
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import child_env, flush_broker, start_worker, wait_for
from tests.providers_app.aws import cur_files as f
from tests.providers_app.aws.conftest import BUCKET, KEYS
from tests.providers_app.aws.test_resources import make_estate

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A worker whose retry backoff is 0.2 s, 0.4 s, 0.8 s (the seed's shape, shortened)."""
    flush_broker()
    proc = start_worker(tmp_path, env=child_env(TASK_RETRY_BACKOFF_BASE="0.2"))
    yield proc
    proc.stop()


def account_create(client, name: str, settings: dict, credentials: dict) -> CloudAccount:
    response = client.post(
        "/api/v1/accounts/",
        {"provider": "aws", "name": name, "external_id": f.ACCOUNT, "settings": settings,
         "credentials": credentials, "credential_kind": "access_key"},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    body = response.json()
    assert "credentials" not in body and body["has_credentials"] is True
    return CloudAccount.objects.get(id=body["id"])


def run(task_name: str, account: CloudAccount, timeout: float = 120) -> TaskRun:
    queued = task_enqueue(task_name=task_name, kwargs={"account_id": account.id}, triggered_by=TriggerKind.COMMAND)

    def done():
        current = TaskRun.objects.get(id=queued.id)
        return current if current.state in (RunState.SUCCESS, RunState.FAILURE) else None

    return wait_for(done, timeout=timeout, what=f"{task_name} to finish")


def billed(account, period: str) -> Decimal:
    return CostLineItem.objects.filter(account=account, billing_period_start__startswith=period).aggregate(
        t=Sum("billed_cost")
    )["t"]


def export_settings(url: str, **extra) -> dict:
    return {"bucket": BUCKET, "prefix": "cur", "export_name": "finops", "regions": ["us-east-1"],
            "endpoint_url": url, "cpu_lookback_days": 1, **extra}  # fmt: skip


def test_sync_resync_changed_period_and_discovery_through_a_worker(moto, worker, admin_client):
    # given: two months of CUR 2.0 in moto's S3 (September as CSV.gz, October as Parquet) and a small estate
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    sep, octo = f.cur2_rows("2024-09", 60), f.cur2_rows("2024-10", 40)
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"finops-00001.csv.gz": f.csv_gz(sep)})
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-10", {"finops-00001.snappy.parquet": f.cur2_parquet(octo)})
    estate = make_estate(moto)
    account = account_create(admin_client, "acme-aws", export_settings(moto.url), KEYS)

    # when: the first sync
    first = run("sync_provider_cost_data", account)
    # then: both periods, every row, sums equal to the source's
    assert first.state == RunState.SUCCESS, first.error
    assert first.queue == "cost_sync"
    assert first.result["periods"] == {"2024-09": 63, "2024-10": 43}
    want = f.expected(sep + octo)
    assert billed(account, "2024-09") == want["2024-09"]["billed"]
    assert billed(account, "2024-10") == want["2024-10"]["billed"]

    # when: a re-sync with nothing changed
    second = run("sync_provider_cost_data", account)
    # then: nothing loaded, nothing replaced
    assert second.state == RunState.SUCCESS, second.error
    assert second.result["unchanged_periods"] == ["2024-09", "2024-10"]
    assert second.result["rows_loaded"] == 0 and second.result["rows_replaced"] == 0
    assert CostLineItem.objects.filter(account=account).count() == 106

    # when: October is delivered again, changed
    octo2 = f.cur2_rows("2024-10", 25, scale="3")
    f.put_data_export(
        s3, BUCKET, "cur", "finops", "2024-10", {"finops-00001.snappy.parquet": f.cur2_parquet(octo2)}, version="v2"
    )
    third = run("sync_provider_cost_data", account)
    # then: exactly October replaced
    assert third.state == RunState.SUCCESS, third.error
    assert third.result["unchanged_periods"] == ["2024-09"]
    assert third.result["periods"] == {"2024-10": 28} and third.result["rows_replaced"] == 43
    assert billed(account, "2024-10") == f.expected(octo2)["2024-10"]["billed"]
    assert billed(account, "2024-09") == want["2024-09"]["billed"]

    # when: discovery
    found = run("discover_provider_resources", account)
    # then: every created resource, with its kind
    assert found.state == RunState.SUCCESS, found.error
    assert found.queue == "resource_discovery"
    kinds = dict(Resource.objects.filter(account=account).values_list("resource_id", "resource_type"))
    for key, kind in (("running", "instance"), ("stopped", "instance"), ("idle_volume", "volume"),
                      ("snapshot", "snapshot"), ("free_ip", "ip_address"), ("lb_arn", "load_balancer"),
                      ("db_arn", "database")):  # fmt: skip
        assert kinds[estate[key]] == kind
    assert kinds["acme-billing"] == "bucket"
    assert found.result["created"] == found.result["resources_seen"] == len(kinds)
    cpu = Resource.objects.get(account=account, resource_id=estate["running"]).attributes["cpu_hourly"]
    assert cpu == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]

    root_volumes = set(
        Resource.objects.get(account=account, resource_id=estate["stopped"]).attributes["attached_volume_ids"]
    )
    assert root_volumes and root_volumes <= set(kinds)

    # when: resources are deleted in AWS and discovery runs again (the instance's root volume goes with it)
    ec2 = moto.client("ec2")
    ec2.terminate_instances(InstanceIds=[estate["stopped"]])
    ec2.delete_volume(VolumeId=estate["idle_volume"])
    ec2.release_address(AllocationId=estate["free_ip"])
    again = run("discover_provider_resources", account)
    # then: exactly those are marked terminated
    assert again.state == RunState.SUCCESS, again.error
    gone = set(Resource.objects.filter(account=account, is_terminated=True).values_list("resource_id", flat=True))
    assert gone == {estate["stopped"], estate["idle_volume"], estate["free_ip"], *root_volumes}
    assert again.result["terminated"] == len(gone)


def test_throttling_and_connection_errors_are_retried_by_the_platform(moto, worker, admin_client, flaky_proxy):
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"p.csv.gz": f.csv_gz(f.cur2_rows("2024-09", 10))})

    # given: S3 answers SlowDown to the first 3 requests; the SDK makes 2 attempts per call (AWS_SDK_MAX_ATTEMPTS)
    proxy = flaky_proxy(3)
    account = account_create(admin_client, "throttled", export_settings(proxy.url), KEYS)
    # when
    ok = run("sync_provider_cost_data", account)
    # then: the first attempt failed after the SDK's 2 tries, the platform's retry succeeded
    assert ok.state == RunState.SUCCESS, ok.error
    assert ok.retries == 1
    assert ok.result["periods"] == {"2024-09": 13}
    assert proxy.failed == 3
    assert "SlowDown" in worker.log

    # given: S3 throttles for good
    stuck = flaky_proxy(1000)
    account = account_create(admin_client, "throttled-for-good", export_settings(stuck.url), KEYS)
    failed = run("sync_provider_cost_data", account)
    # then: 1 + 3 platform retries, 2 SDK attempts each, then a dead letter
    assert failed.state == RunState.FAILURE
    assert (failed.retries, failed.error_type) == (3, "TransientError")
    assert "SlowDown" in failed.error
    assert stuck.seen == 8
    assert DeadLetter.objects.filter(run=failed).exists()

    # given: nothing listens on the endpoint
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    account = account_create(admin_client, "unreachable", export_settings(closed), KEYS)
    down = run("sync_provider_cost_data", account)
    assert (down.state, down.retries, down.error_type) == (RunState.FAILURE, 3, "TransientError")
    assert "EndpointConnectionError" in down.error


def test_a_missing_permission_is_not_retried_and_a_bad_key_is_named(moto, worker, admin_client, iam_enforced):
    # given: an IAM user allowed sts and ec2 but not s3:ListBucket, with IAM enforced by moto
    limited = account_create(admin_client, "no-s3", export_settings(moto.url), iam_enforced["no-s3"])
    # when
    failed = run("sync_provider_cost_data", limited)
    # then: failed at once, saying which permission on which bucket
    assert failed.state == RunState.FAILURE
    assert (failed.retries, failed.error_type) == (0, "PermanentError")
    assert failed.error.startswith("AccessDenied: s3:ListBucket on arn:aws:s3:::acme-billing (prefix cur/finops/)")

    # when: test connection (API) for an account whose access key does not exist
    bogus = account_create(
        admin_client, "bogus", export_settings(moto.url),
        {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
    )  # fmt: skip
    response = admin_client.post(f"/api/v1/accounts/{bogus.id}/test-connection/")
    assert response.status_code == 202
    check = wait_for(
        lambda: TaskRun.objects.filter(celery_task_id=response.json()["task_id"], state=RunState.SUCCESS).first(),
        timeout=60,
        what="the connection check",
    )
    # then
    assert check.result["ok"] is False
    assert check.result["summary"] == (
        "bogus: credentials failed: sts:GetCallerIdentity: the access key id is not valid (InvalidClientTokenId)"
    )
    assert "wJalrXUtnFEMI" not in json.dumps(check.result) and "wJalrXUtnFEMI" not in worker.log

"""A GCP account end to end through a real worker: configured over the API, synced from the BigQuery billing
export, discovered from Compute Engine, tested, throttled and refused — the local Google API serving the
real google-cloud-* clients that run inside the worker process."""

import json

import pytest

from costs_app.models import CostLineItem
from providers_app.models import CloudAccount, Resource
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import child_env, flush_broker, start_worker, wait_for

from .conftest import (
    BILLING_ACCOUNT,
    DATASET,
    DETAILED_TABLE,
    INVENTORY_PROJECT,
    PROJECT,
    billing_rows,
)
from .google_api import service_account_key

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
SCHEMA = "billing_export_resource_v1_schema.json"
ORPHAN = "//compute.googleapis.com/projects/acme-prod/zones/us-central1-a/disks/5550001112223334447"


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A worker on every queue with the retry backoff shortened to 0.2 s (the policy's shape, not its minutes)."""
    flush_broker()
    proc = start_worker(tmp_path, env=child_env(TASK_RETRY_BACKOFF_BASE="0.2"))
    yield proc
    proc.stop()


def finished(run_id: int, timeout: float = 90) -> TaskRun:
    return wait_for(
        lambda: TaskRun.objects.filter(id=run_id, state__in=(RunState.SUCCESS, RunState.FAILURE)).first(),
        timeout=timeout,
        what=f"run {run_id} to finish",
    )


def run(task_name: str, **kwargs) -> TaskRun:
    return finished(task_enqueue(task_name=task_name, kwargs=kwargs, triggered_by=TriggerKind.COMMAND).id)


def test_gcp_account_through_the_worker(worker, api, service_account, admin_client):
    # given: an account added over the API with its service account key
    api.table_put(DETAILED_TABLE, SCHEMA, billing_rows("202409", 60) + billing_rows("202410", 20, cost="2.5"))
    payload = {
        "provider": "gcp",
        "name": "acme-gcp",
        "external_id": BILLING_ACCOUNT,
        "settings": {
            "source": "bigquery",
            "project": PROJECT,
            "dataset": DATASET,
            "projects": [INVENTORY_PROJECT],
            "endpoints": {"bigquery": api.url, "compute": api.url, "monitoring": api.url},
            "page_size": 25,
        },
        "credentials": service_account[0],
        "credential_kind": "service_account",
    }
    response = admin_client.post("/api/v1/accounts/", data=json.dumps(payload), content_type="application/json")
    assert response.status_code == 201, response.content
    assert "PRIVATE KEY" not in response.content.decode()
    account = CloudAccount.objects.get(id=response.json()["id"])

    # when: a sync of the two-month export
    first = run("sync_provider_cost_data", account_id=account.id)
    # then
    assert first.state == RunState.SUCCESS, first.error
    assert first.result["periods"] == {"2024-09": 90, "2024-10": 30}
    lines = CostLineItem.objects.filter(account=account)
    assert lines.count() == 120

    # when: synced again with nothing changed
    second = run("sync_provider_cost_data", account_id=account.id)
    # then
    assert second.state == RunState.SUCCESS, second.error
    assert second.result["unchanged_periods"] == ["2024-09", "2024-10"]
    assert second.result["rows_loaded"] == 0 and lines.count() == 120

    # when: October is re-exported with more lines
    api.table_put(DETAILED_TABLE, SCHEMA, billing_rows("202409", 60) + billing_rows("202410", 24, cost="2.5", seed=3))
    third = run("sync_provider_cost_data", account_id=account.id)
    # then: exactly October replaced
    assert third.state == RunState.SUCCESS, third.error
    assert third.result["unchanged_periods"] == ["2024-09"]
    assert third.result["periods"] == {"2024-10": 36} and third.result["rows_replaced"] == 30
    assert lines.filter(billing_period_start__month=9).count() == 90
    assert lines.count() == 126

    # when: discovery, then the orphan disk is deleted and discovery runs again
    api.cpu[INVENTORY_PROJECT] = {"4121876543210987654": [0.02, 0.03]}
    found = run("discover_provider_resources", account_id=account.id)
    assert found.state == RunState.SUCCESS, found.error
    assert found.result["created"] == 9
    api.compute[INVENTORY_PROJECT]["disks"] = [
        d for d in api.compute[INVENTORY_PROJECT]["disks"] if d["name"] != "orphan-data"
    ]
    again = run("discover_provider_resources", account_id=account.id)
    assert again.state == RunState.SUCCESS, again.error
    assert again.result["terminated"] == 1
    assert Resource.objects.get(account=account, resource_id=ORPHAN).is_terminated
    # the inventory joins the cost lines on the instance ids
    web = Resource.objects.get(account=account, name="web-1", resource_type="instance")
    assert lines.filter(resource_id=web.resource_id).exists()
    assert web.attributes["cpu_hourly"] == [2.0, 3.0]

    # when: throttled (429 on jobs.insert), then unavailable (503 on getQueryResults), then answered
    api.fail("/jobs", 1, status=429)
    api.fail("/queries/", 1, status=503)
    throttled = run("sync_provider_cost_data", account_id=account.id, force=True)
    # then: retried by the platform's policy (0.2 s, then 0.4 s) and succeeded
    assert throttled.state == RunState.SUCCESS, throttled.error
    assert throttled.retries == 2
    assert "retry 1 in 0.2s" in worker.log and "retry 2 in 0.4s" in worker.log
    assert "TooManyRequests" in worker.log and "ServiceUnavailable" in worker.log
    assert lines.count() == 126

    # when: the role lacks bigquery.jobs.create
    api.deny("bigquery.jobs.create")
    refused = run("sync_provider_cost_data", account_id=account.id, force=True)
    # then: not retried, the permission named, data intact
    assert refused.state == RunState.FAILURE
    assert refused.retries == 0 and refused.error_type == "PermanentError"
    assert "missing permission bigquery.jobs.create" in refused.error
    assert DeadLetter.objects.filter(run=refused).exists()
    assert lines.count() == 126
    api.reset_faults()

    # when: the key is replaced by one Google does not know, and the connection tested over the API
    wrong, _ = service_account_key(service_account[0]["client_email"], PROJECT, api.token_uri)
    patched = admin_client.patch(
        f"/api/v1/accounts/{account.id}/", data=json.dumps({"credentials": wrong}), content_type="application/json"
    )
    assert patched.status_code == 200
    check = admin_client.post(f"/api/v1/accounts/{account.id}/test-connection/")
    assert check.status_code == 202
    result = finished(TaskRun.objects.get(celery_task_id=check.json()["task_id"]).id)
    # then
    assert result.state == RunState.SUCCESS
    assert result.result["ok"] is False
    assert result.result["summary"].startswith("acme-gcp: credentials failed:")
    assert "invalid_grant: Invalid JWT Signature." in result.result["summary"]

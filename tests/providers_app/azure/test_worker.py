"""The Azure connector through the real task path: the API, a worker subprocess, TaskRuns, the retry policy.

Azurite serves the exports (behind a proxy that can answer 503 ServerBusy), the local HTTPS Entra ID + ARM
server the tokens and the inventory; the worker reaches both through the account's settings.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum

from costs_app.models import CostLineItem
from providers_app.models import CloudAccount, Resource
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import child_env, start_worker, wait_for
from tests.providers_app.azure.arm_server import add_disk, add_public_ip, add_vm
from tests.providers_app.azure.blob_proxy import BlobProxy
from tests.providers_app.azure.conftest import account_settings, credential
from tests.providers_app.azure.exports import SUB_A, actual_rows, csv_bytes, upload_run

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
PREFIX = "finops/daily-actual/"


@pytest.fixture
def container(azurite):
    client = azurite.new_container()
    yield client
    client.delete_container()


@pytest.fixture
def proxy(azurite):
    server = BlobProxy(azurite.port)
    yield server
    server.stop()


@pytest.fixture
def worker(transactional_db, tmp_path):
    from tests.celery_procs import flush_broker

    flush_broker()
    process = start_worker(tmp_path, env=child_env(TASK_RETRY_BACKOFF_BASE="0.5"))
    yield process
    process.stop()


def finished(run: TaskRun, timeout: float = 90) -> TaskRun:
    def done():
        current = TaskRun.objects.get(id=run.id)
        return current if current.state in (RunState.SUCCESS, RunState.FAILURE) else None

    return wait_for(done, timeout=timeout, what=f"{run.task_name} to finish")


def run_task(name: str, account: CloudAccount) -> TaskRun:
    return finished(task_enqueue(task_name=name, kwargs={"account_id": account.id}, triggered_by=TriggerKind.COMMAND))


def create_account(admin_client, settings: dict, secret: dict) -> CloudAccount:
    response = admin_client.post(
        "/api/v1/accounts/",
        {
            "provider": "azure",
            "name": "contoso-azure",
            "external_id": SUB_A,
            "settings": settings,
            "credentials": secret,
            "credential_kind": "service_principal",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert "credentials" not in body and body["has_credentials"] is True
    assert secret["client_secret"] not in response.content.decode()
    return CloudAccount.objects.get(id=body["id"])


def billed(account) -> dict[str, str]:
    rows = CostLineItem.objects.filter(account=account).values("billing_period_start").annotate(s=Sum("billed_cost"))
    return {r["billing_period_start"].strftime("%Y-%m"): str(r["s"]) for r in rows}


def test_sync_resync_changed_period_discovery_and_bad_credential_through_a_worker(
    worker, admin_client, operator_client, fake_azure, azurite, azure_tls, container, proxy
):
    # given: an account created over the API, pointed at Azurite (through the proxy) and the local ARM
    state = fake_azure.state
    settings = account_settings(fake_azure, azurite, azure_tls, container.container_name, subscription_ids=[SUB_A])
    settings["storage_account_url"] = f"http://127.0.0.1:{proxy.port}/devstoreaccount1"
    account = create_account(admin_client, settings, credential())
    now = datetime.now(UTC)
    august, september = actual_rows("2024-08", 50), actual_rows("2024-09", 70)
    upload_run(
        container, prefix=PREFIX, period="2024-08", parts=[csv_bytes(august)], submitted=now - timedelta(days=30)
    )
    upload_run(container, prefix=PREFIX, period="2024-09", parts=[csv_bytes(september[:40]), csv_bytes(september[40:])],
               submitted=now - timedelta(days=1))  # fmt: skip

    # when: a sync, with Blob storage busy for the first three requests
    proxy.fail_next = 3
    first = run_task("sync_provider_cost_data", account)

    # then: the first attempt gave up after the SDK's single retry, the platform retried it, and it loaded both periods
    assert first.state == RunState.SUCCESS, first.error
    assert first.retries == 1 and proxy.failed == 3
    assert first.result["periods"] == {"2024-08": 50, "2024-09": 70}
    assert "ServerBusy" in worker.log or "503" in worker.log
    assert CostLineItem.objects.filter(account=account).count() == 120
    loaded = billed(account)

    # when: a re-sync
    again = run_task("sync_provider_cost_data", account)
    # then: nothing changed
    assert again.state == RunState.SUCCESS, again.error
    assert again.result["unchanged_periods"] == ["2024-08", "2024-09"] and again.result["rows_loaded"] == 0
    assert CostLineItem.objects.filter(account=account).count() == 120 and billed(account) == loaded

    # when: a newer run of September only
    september2 = actual_rows("2024-09", 75, cost="3.5")
    upload_run(container, prefix=PREFIX, period="2024-09", parts=[csv_bytes(september2)], submitted=now)
    changed = run_task("sync_provider_cost_data", account)
    # then: exactly September replaced
    assert changed.state == RunState.SUCCESS, changed.error
    assert changed.result["unchanged_periods"] == ["2024-08"]
    assert changed.result["periods"] == {"2024-09": 75} and changed.result["rows_replaced"] == 70
    assert billed(account)["2024-08"] == loaded["2024-08"]
    assert CostLineItem.objects.filter(account=account).count() == 125

    # when: discovery finds what was created, then what was deleted is terminated
    vm = add_vm(state, SUB_A, "web-1")
    add_disk(state, SUB_A, "web-1_OsDisk_1", managed_by=vm["id"])
    orphan = add_disk(state, SUB_A, "orphan")
    add_public_ip(state, SUB_A, "idle-ip", address="20.1.2.3")
    found = run_task("discover_provider_resources", account)
    assert found.state == RunState.SUCCESS, found.error
    assert found.queue == "resource_discovery"
    assert (found.result["created"], found.result["terminated"]) == (4, 0)
    state.delete(SUB_A, "disk", orphan["id"])
    gone = run_task("discover_provider_resources", account)
    assert (gone.result["created"], gone.result["terminated"]) == (0, 1)
    assert Resource.objects.get(account=account, resource_id=orphan["id"].lower()).is_terminated

    # when: the client secret is rotated in Azure but not here: test connection over the API
    state.register_app(*fake_azure_app(state), "rotated-secret")
    response = operator_client.post(f"/api/v1/accounts/{account.id}/test-connection/")
    assert response.status_code == 202
    check = wait_for(
        lambda: TaskRun.objects.filter(celery_task_id=response.data["task_id"], state=RunState.SUCCESS).first(),
        timeout=60,
        what="the connection check",
    )
    assert check.result["ok"] is False
    assert check.result["summary"].startswith(
        "contoso-azure: credentials failed: Microsoft Entra ID rejected the credential's client_secret: AADSTS7000215"
    )
    assert credential()["client_secret"] not in worker.log


def fake_azure_app(state) -> tuple[str, str]:
    return next(iter(state.apps))


def test_throttled_discovery_is_retried_and_a_missing_permission_is_not(
    worker, admin_client, fake_azure, azurite, azure_tls
):
    # given
    state = fake_azure.state
    add_vm(state, SUB_A, "api-1")
    settings = account_settings(fake_azure, azurite, azure_tls, "", subscription_ids=[SUB_A])
    account = create_account(admin_client, settings, credential())

    # when: ARM throttles the VM listing four times (two platform attempts' worth, with the SDK's one retry each)
    state.fail("/providers/microsoft.compute/virtualmachines", 429, times=4)
    throttled = run_task("discover_provider_resources", account)
    # then
    assert throttled.state == RunState.SUCCESS, throttled.error
    assert throttled.retries == 2
    assert throttled.result["created"] == 1

    # when: the service principal lacks read on public IPs
    state.deny("/providers/microsoft.network/publicipaddresses", "Microsoft.Network/publicIPAddresses/read")
    denied = run_task("discover_provider_resources", account)
    time.sleep(1.0)  # a retry, had one been scheduled, would have started by now
    # then: failed at once, naming the action, dead-lettered, nothing marked terminated
    denied = TaskRun.objects.get(id=denied.id)
    assert denied.state == RunState.FAILURE
    assert denied.retries == 0 and denied.error_type == "PermanentError"
    assert "may not perform Microsoft.Network/publicIPAddresses/read on /subscriptions/" in denied.error
    assert DeadLetter.objects.filter(run=denied).exists()
    assert not Resource.objects.filter(account=account, is_terminated=True).exists()

"""Azure inventory through the real azure-identity / azure-mgmt-* clients against the local Entra ID + ARM server:
the resource contract's attributes, paging, and the translation of ARM errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from costs_app.services.inventory import account_resources_discover
from finops.errors import PermanentError, TransientError
from providers_app.connectors.azure import AzureResourceSource, connection_check
from providers_app.models import Resource
from providers_app.services.accounts import account_create
from tests.providers_app.azure.arm_server import add_disk, add_public_ip, add_snapshot, add_vm, set_cpu
from tests.providers_app.azure.conftest import account_settings, credential
from tests.providers_app.azure.exports import SUB_A, SUB_B

pytestmark = pytest.mark.django_db
NOW = datetime(2024, 10, 7, 12, 30, tzinfo=UTC)


def make_account(server, azure_tls, *, secret=None, **settings):
    values = {"subscription_ids": [SUB_A, SUB_B], "storage_account_url": "", "container": ""}
    values.update(settings)
    base = dict(account_settings(server, _NoAzurite(), azure_tls, ""))
    base.update(values)
    return account_create(
        provider="azure",
        name="contoso",
        settings=base,
        credentials=credential(**({"secret": secret} if secret else {})),
    )


class _NoAzurite:
    url = ""


def populate(state):
    web = [add_vm(state, SUB_A, f"web-{i}") for i in range(3)]  # 3 VMs: two pages
    batch = add_vm(state, SUB_B, "batch-1", group="rg-batch", power="deallocated")
    for vm in [*web, batch]:
        group = vm["id"].split("/")[4]
        sub = vm["id"].split("/")[2]
        add_disk(state, sub, f"{vm['name']}_OsDisk_1", group=group, managed_by=vm["id"])
        add_disk(state, sub, f"{vm['name']}-data-0", group=group, managed_by=vm["id"])
    orphan = add_disk(state, SUB_A, "orphan-data")
    snap = add_snapshot(
        state, SUB_A, "web-0-nightly", source=web[0]["id"].replace("virtualMachines/web-0", "disks/web-0_OsDisk_1")
    )
    nic_config = (
        web[0]["id"].replace("Microsoft.Compute/virtualMachines/web-0", "Microsoft.Network/networkInterfaces/web-0-nic")
        + "/ipConfigurations/ipconfig1"
    )
    used = add_public_ip(state, SUB_A, "web-0-ip", address="20.61.1.10", ip_configuration=nic_config)
    idle = add_public_ip(state, SUB_A, "old-ip", address="20.61.1.11")
    set_cpu(
        state,
        web[0]["id"],
        end=NOW.replace(minute=0),
        averages=[3.5, None, 2.25, 4.0],
        available_memory=[12884901888.0, None, None, 4294967296.4],  # 12 GiB free, then 4 GiB
    )
    return web, batch, orphan, snap, used, idle


def test_listing_yields_the_resource_contract(fake_azure, azure_tls):
    # given
    web, batch, orphan, snap, used, idle = populate(fake_azure.state)
    account = make_account(fake_azure, azure_tls, cpu_lookback_hours=4)

    # when
    items = {item["resource_id"]: item for item in AzureResourceSource(account, now=NOW).resources()}

    # then: every resource once, ids lower-cased ARM ids
    assert len(items) == 4 + 8 + 1 + 1 + 2
    vm = items[web[0]["id"].lower()]
    assert vm["resource_type"] == "instance" and vm["state"] == "running" and vm["service_name"] == "Virtual Machines"
    assert vm["region"] == "westeurope" and vm["tags"] == {"env": "prod", "CostCenter": "1234"}
    assert vm["attributes"]["instance_type"] == "Standard_D4s_v3"
    assert vm["attributes"]["created_at"] == "2024-03-14T09:21:44Z"
    assert vm["attributes"]["attached_volume_ids"] == [
        web[0]["id"].lower().replace("virtualmachines/web-0", "disks/web-0_osdisk_1"),
        web[0]["id"].lower().replace("virtualmachines/web-0", "disks/web-0-data-0"),
    ]
    assert vm["attributes"]["cpu_hourly"] == [3.5, 2.25, 4.0]  # the hour without data is left out
    assert vm["attributes"]["cpu_hourly_end"] == "2024-10-07T12:00:00Z"
    # free memory in whole bytes, from the same metrics call
    assert vm["attributes"]["memory_available_hourly"] == [12884901888, 4294967296]
    assert vm["attributes"]["memory_hourly_end"] == "2024-10-07T12:00:00Z"
    assert "stopped_at" not in vm["attributes"]
    stopped = items[batch["id"].lower()]
    assert stopped["state"] == "deallocated" and stopped["attributes"]["stopped_at"] == "2024-09-20T17:03:11Z"
    assert stopped["attributes"]["cpu_hourly"] == []
    assert "memory_available_hourly" not in stopped["attributes"]  # no memory data: unknown, not zero
    disk = items[orphan["id"].lower()]
    assert disk["resource_type"] == "volume" and disk["state"] == "unattached"
    assert disk["attributes"] == {
        "size_gb": 128,
        "volume_type": "Premium_LRS",
        "attached_to": [],
        "created_at": "2024-03-14T09:21:50Z",
    }
    attached = items[batch["id"].lower().replace("virtualmachines/batch-1", "disks/batch-1-data-0")]
    assert attached["attributes"]["attached_to"] == [batch["id"].lower()] and attached["state"] == "attached"
    snapshot = items[snap["id"].lower()]
    assert snapshot["attributes"]["source_volume_id"] == snap["properties"]["creationData"]["sourceResourceId"].lower()
    assert snapshot["attributes"]["size_gb"] == 30 and snapshot["resource_type"] == "snapshot"
    ip = items[used["id"].lower()]
    assert ip["attributes"]["associated_with"].endswith("/providers/microsoft.network/networkinterfaces/web-0-nic")
    assert ip["attributes"]["address"] == "20.61.1.10" and ip["state"] == "associated"
    assert items[idle["id"].lower()]["attributes"]["associated_with"] == ""
    # paging followed (3 VMs, 2 per page) and one metrics call per VM
    assert fake_azure.state.count("skiptoken") >= 2
    assert fake_azure.state.count("/providers/Microsoft.Insights/metrics") == 4


def test_discovery_upserts_and_marks_deleted_resources_terminated(fake_azure, azure_tls):
    web, batch, orphan, *_ = populate(fake_azure.state)
    account = make_account(fake_azure, azure_tls)
    first = account_resources_discover(account_id=account.id, now=NOW)
    assert (first.created, first.terminated) == (16, 0)

    fake_azure.state.delete(SUB_A, "disk", orphan["id"])
    fake_azure.state.delete(SUB_A, "vm", web[2]["id"])
    second = account_resources_discover(account_id=account.id, now=NOW)
    assert (second.created, second.updated, second.terminated) == (0, 14, 2)
    gone = Resource.objects.get(account=account, resource_id=orphan["id"].lower())
    assert gone.is_terminated and gone.state == "terminated"


def test_arm_errors_are_translated(fake_azure, azure_tls):
    populate(fake_azure.state)
    account = make_account(fake_azure, azure_tls)

    # permission missing: permanent, names the action and scope
    fake_azure.state.deny("/providers/microsoft.compute/disks", "Microsoft.Compute/disks/read")
    with pytest.raises(PermanentError) as denied:
        list(AzureResourceSource(account).resources())
    assert str(denied.value) == (
        f"listing managed disks in subscription {SUB_A}: permission denied: the service principal may not perform "
        f"Microsoft.Compute/disks/read on /subscriptions/{SUB_A} (grant it the Reader role there)"
    )
    fake_azure.state.denied.clear()

    # throttled beyond the SDK's one retry: transient, for the platform to retry
    fake_azure.state.fail("/providers/microsoft.compute/virtualmachines", 429, times=2)
    with pytest.raises(TransientError, match="429 TooManyRequests"):
        list(AzureResourceSource(account).resources())
    # one throttled answer: the SDK's own single retry absorbs it
    fake_azure.state.fail("/providers/microsoft.compute/virtualmachines", 503, times=1)
    assert len(list(AzureResourceSource(account).resources())) == 16

    # nothing listening: transient
    account.settings["arm_endpoint"] = "https://127.0.0.1:9"
    with pytest.raises(TransientError, match="could not reach Azure"):
        list(AzureResourceSource(account).resources())

    # unknown subscription: permanent
    account.settings.update(
        arm_endpoint=fake_azure.state.base, subscription_ids=["00000000-0000-0000-0000-000000000000"]
    )
    with pytest.raises(PermanentError, match="could not be found"):
        list(AzureResourceSource(account).resources())


def test_bad_credentials_are_named(fake_azure, azure_tls):
    populate(fake_azure.state)
    account = make_account(fake_azure, azure_tls, secret="wrong-secret")
    with pytest.raises(PermanentError) as failure:
        list(AzureResourceSource(account).resources())
    assert "Microsoft Entra ID rejected the credential's client_secret: AADSTS7000215: Invalid client secret" in str(
        failure.value
    )
    assert "wrong-secret" not in str(failure.value)

    report = connection_check(account)
    assert report.checks[0].name == "credentials" and not report.checks[0].ok
    assert report.summary().startswith(
        "contoso: credentials failed: Microsoft Entra ID rejected the credential's client_secret: AADSTS7000215"
    )


def test_connection_check_names_the_denied_action(fake_azure, azure_tls):
    populate(fake_azure.state)
    fake_azure.state.deny(
        f"/subscriptions/{SUB_B}/providers/microsoft.compute/virtualmachines", "Microsoft.Compute/virtualMachines/read"
    )
    account = make_account(fake_azure, azure_tls)
    report = connection_check(account)
    checks = {check.name: check for check in report.checks}
    assert checks["credentials"].ok
    assert checks[f"inventory read on subscription {SUB_A}"].ok
    denied = checks[f"inventory read on subscription {SUB_B}"]
    assert not denied.ok
    assert "may not perform Microsoft.Compute/virtualMachines/read on /subscriptions/" in denied.detail
    assert not checks["export container (not set)"].ok
    assert "settings.storage_account_url is not set" in checks["export container (not set)"].detail


def test_settings_and_credential_are_validated(fake_azure, azure_tls):
    account = make_account(fake_azure, azure_tls, subscription_ids=["not-a-guid"])
    report = connection_check(account)
    assert report.summary() == (
        "contoso: settings and credential failed: Azure account 'contoso': settings.subscription_ids has "
        "'not-a-guid', not a GUID"
    )
    account.settings["subscription_ids"] = [SUB_A]
    account.credential.set_secret({"tenant_id": "x", "client_id": "y"})
    assert "the credential lacks client_secret" in connection_check(account).summary()


def test_entra_id_outage_is_transient_and_an_unknown_tenant_is_named(fake_azure, azure_tls):
    populate(fake_azure.state)
    account = make_account(fake_azure, azure_tls)
    fake_azure.state.fail("/oauth2/v2.0/token", 503, times=2)
    with pytest.raises(TransientError, match="Microsoft Entra ID is throttling or unavailable"):
        list(AzureResourceSource(account).resources())

    account.credential.set_secret({**credential(), "tenant_id": "00000000-1111-2222-3333-444444444444"})
    report = connection_check(account)
    assert report.summary().startswith(
        "contoso: credentials failed: Microsoft Entra ID does not know the credential's tenant_id"
    ), report.summary()


def test_tokens_are_only_sent_over_tls(fake_azure, azure_tls):
    populate(fake_azure.state)
    account = make_account(fake_azure, azure_tls, arm_endpoint="http://127.0.0.1:9")
    assert "settings.arm_endpoint 'http://127.0.0.1:9' must be https" in connection_check(account).summary()
    account.settings.update(
        arm_endpoint=fake_azure.state.base, storage_account_url="http://127.0.0.1:10000/devstoreaccount1", container="c"
    )
    account.credential.set_secret({k: v for k, v in credential().items() if k != "storage_account_key"})
    report = connection_check(account)
    assert [c.name for c in report.checks if not c.ok] == ["export container c"]
    assert "is not https: the service principal's token is only sent over TLS" in report.checks[-1].detail

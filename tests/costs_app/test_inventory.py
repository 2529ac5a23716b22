"""Resource inventory from cost lines: upsert by ResourceId, latest attributes, vanished and stale ones terminated."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Max

from costs_app.models import CostLineItem
from costs_app.services.ingest import focus_file_import
from costs_app.services.inventory import account_resources_discover
from finops.errors import PermanentError
from providers_app.models import Resource
from tests.factories import CloudAccountFactory, CostLineItemFactory
from tests.providers_app.focus_files import SAMPLE

pytestmark = pytest.mark.django_db

NOW = datetime(2024, 10, 5, tzinfo=UTC)


def line(account, resource_id, day: int, **fields):
    start = datetime(2024, 9, day, tzinfo=UTC)
    return CostLineItemFactory(
        account=account,
        resource_id=resource_id,
        charge_period_start=start,
        charge_period_end=start + timedelta(days=1),
        **fields,
    )


def test_sample_inventory_has_every_resource_with_its_latest_attributes():
    # given
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))
    resource_ids = set(
        CostLineItem.objects.filter(account=account, resource_id__isnull=False).values_list("resource_id", flat=True)
    )
    # when
    result = account_resources_discover(account_id=account.id, now=NOW)
    # then
    assert (
        result.resources_seen == result.created == len(resource_ids) == Resource.objects.filter(account=account).count()
    )
    storage = Resource.objects.get(account=account, name="adamhourlyexport")
    last = CostLineItem.objects.filter(account=account, resource_id=storage.resource_id).aggregate(
        m=Max("charge_period_end")
    )
    assert storage.last_seen == last["m"]
    assert storage.resource_type == "Storage account" and storage.region == "eastus2"
    assert storage.service_name == "Storage Accounts"
    assert storage.tags["CostCenter"] == "1234"
    assert storage.attributes["service_category"] == "Storage"


def test_a_second_run_updates_instead_of_duplicating():
    # given
    account = CloudAccountFactory()
    line(account, "i-1", 20, resource_type="Virtual Machine", tags={"team": "a"})
    account_resources_discover(account_id=account.id, now=NOW)
    line(account, "i-1", 28, resource_type="Virtual Machine", resource_name="web-1", tags={"team": "b"})
    # when
    result = account_resources_discover(account_id=account.id, now=NOW)
    # then
    assert (result.created, result.updated) == (0, 1)
    resource = Resource.objects.get(account=account, resource_id="i-1")
    assert resource.name == "web-1" and resource.tags == {"team": "b"}
    assert resource.first_seen == datetime(2024, 9, 20, tzinfo=UTC)
    assert resource.last_seen == datetime(2024, 9, 29, tzinfo=UTC)
    assert not resource.is_terminated


def test_stale_and_vanished_resources_are_marked_terminated_and_can_come_back(settings):
    # given: the data horizon is 30 Sept; i-old was last billed on 10 Sept
    settings.OPTIMIZATION_STALE_RESOURCE_DAYS = 7
    account = CloudAccountFactory()
    line(account, "i-live", 29)
    line(account, "i-old", 9)
    doomed = line(account, "i-gone", 28)
    account_resources_discover(account_id=account.id, now=NOW)
    doomed.delete()  # its billing period was re-imported without it
    # when
    result = account_resources_discover(account_id=account.id, now=NOW)
    # then
    states = {r.resource_id: (r.is_terminated, r.terminated_at) for r in Resource.objects.filter(account=account)}
    assert states["i-live"] == (False, None)
    assert states["i-old"] == (True, datetime(2024, 9, 10, tzinfo=UTC))
    assert states["i-gone"] == (True, datetime(2024, 9, 29, tzinfo=UTC))
    assert result.terminated == 1  # i-gone now; i-old was already terminated by the first run
    # when it is billed again
    line(account, "i-old", 30)
    again = account_resources_discover(account_id=account.id, now=NOW)
    # then
    old = Resource.objects.get(account=account, resource_id="i-old")
    assert (old.is_terminated, old.terminated_at, again.reactivated) == (False, None, 1)


def test_a_provider_without_a_connector_is_a_permanent_error():
    # given
    account = CloudAccountFactory(provider="oracle")
    # when / then
    with pytest.raises(PermanentError, match="oracle connector not available"):
        account_resources_discover(account_id=account.id, now=NOW)


def test_a_run_reads_only_the_recent_window_of_lines_not_the_accounts_history(settings):
    # given: i-retired billed in March only, already in the inventory from a run back then; i-ancient billed in
    # February only and never inventoried; i-live billed until 29 Sept (the horizon: 30 Sept)
    settings.OPTIMIZATION_STALE_RESOURCE_DAYS = 7
    account = CloudAccountFactory()

    def billed(resource_id, start):
        CostLineItemFactory(
            account=account,
            resource_id=resource_id,
            billing_period_start=start.replace(day=1),
            charge_period_start=start,
            charge_period_end=start + timedelta(days=1),
        )

    billed("i-retired", datetime(2024, 3, 10, tzinfo=UTC))
    account_resources_discover(account_id=account.id, now=datetime(2024, 3, 12, tzinfo=UTC))
    billed("i-ancient", datetime(2024, 2, 3, tzinfo=UTC))
    billed("i-live", datetime(2024, 8, 1, tzinfo=UTC))
    billed("i-live", datetime(2024, 9, 29, tzinfo=UTC))
    # when
    result = account_resources_discover(account_id=account.id, now=NOW)
    # then: i-live is active, seen from its first line in the window (1 Aug is within 37 + 31 days of the horizon)
    live = Resource.objects.get(account=account, resource_id="i-live")
    assert (live.is_terminated, live.first_seen) == (False, datetime(2024, 8, 1, tzinfo=UTC))
    # and: i-retired, whose lines lie before the window, is terminated at the last_seen recorded in March
    retired = Resource.objects.get(account=account, resource_id="i-retired")
    assert (retired.is_terminated, retired.terminated_at) == (True, datetime(2024, 3, 11, tzinfo=UTC))
    # and: February was not read at all: i-ancient is not in the inventory
    assert not Resource.objects.filter(account=account, resource_id="i-ancient").exists()
    assert (result.resources_seen, result.horizon) == (1, datetime(2024, 9, 30, tzinfo=UTC))

"""Tag rollups: the spend of each active cost allocation tag key per value, untagged spend under ""."""

import csv
import json
from collections import defaultdict
from decimal import Decimal

import pytest
from django.db.models import Sum

from costs_app.models import CostAllocationTag, CostDailyRollup, CostTagRollup
from costs_app.services.ingest import focus_file_import, tag_rollups_rebuild
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE

pytestmark = pytest.mark.django_db


def sample_spend_by(key: str) -> dict[str, Decimal]:
    """BilledCost per value of tag `key`, straight from the CSV ("" for rows without the key)."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    with open(SAMPLE, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            tags = json.loads(row["Tags"]) if row["Tags"] not in ("", "NULL") else {}
            totals[str(tags.get(key, ""))] += Decimal(row["BilledCost"] or "0")
    return dict(totals)


def rollup_spend_by(account, key: str) -> dict[str, Decimal]:
    rows = CostTagRollup.objects.filter(account=account, tag_key=key).values("tag_value").annotate(t=Sum("billed_cost"))
    return {row["tag_value"]: row["t"] for row in rows}


def test_ingest_rolls_up_active_keys_per_value_and_untagged():
    CostAllocationTag.objects.create(key="environment")
    CostAllocationTag.objects.create(key="org", is_active=False)
    account = CloudAccountFactory(provider="focus", name="sample")
    focus_file_import(account=account, path=str(SAMPLE))

    assert rollup_spend_by(account, "environment") == sample_spend_by("environment")
    assert "" in rollup_spend_by(account, "environment")  # the sample has untagged rows
    assert not CostTagRollup.objects.filter(tag_key="org").exists()
    # Every key's values add up to the day's whole spend.
    daily = dict(CostDailyRollup.objects.filter(account=account).values_list("day").annotate(t=Sum("billed_cost")))
    by_day = dict(
        CostTagRollup.objects.filter(account=account, tag_key="environment")
        .values_list("day")
        .annotate(t=Sum("billed_cost"))
    )
    assert by_day == daily


def test_activating_a_key_backfills_and_reimport_replaces():
    account = CloudAccountFactory(provider="focus", name="sample")
    focus_file_import(account=account, path=str(SAMPLE))
    assert not CostTagRollup.objects.exists()

    CostAllocationTag.objects.create(key="business_unit")
    written = tag_rollups_rebuild(keys=["business_unit"])
    assert written > 0
    expected = sample_spend_by("business_unit")
    assert rollup_spend_by(account, "business_unit") == expected

    focus_file_import(account=account, path=str(SAMPLE))  # the same export again: same rollups, not doubled
    assert rollup_spend_by(account, "business_unit") == expected


def test_admin_activation_backfills_and_deactivation_removes(admin_client):
    account = CloudAccountFactory(provider="focus", name="sample")
    focus_file_import(account=account, path=str(SAMPLE))

    page = admin_client.post("/admin/costs_app/costallocationtag/add/", {"key": "application", "is_active": "on"})
    assert page.status_code == 302
    assert rollup_spend_by(account, "application") == sample_spend_by("application")

    tag = CostAllocationTag.objects.get(key="application")
    page = admin_client.post(f"/admin/costs_app/costallocationtag/{tag.pk}/change/", {"key": "application"})
    assert page.status_code == 302
    assert not CostTagRollup.objects.filter(tag_key="application").exists()

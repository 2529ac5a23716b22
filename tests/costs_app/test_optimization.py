"""Optimisation rules: each fires on the waste built for it and only there, with its thresholds read from settings.

Cost data goes through the real ingest (generated FOCUS 1.2 files); inventory rows have the shape the
connectors write (providers_app/connectors/base.py RESOURCE_ATTRIBUTES).
"""

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from costs_app.models import Recommendation, RecommendationStatus, SavingBasis
from costs_app.services import cloud_prices
from costs_app.services.optimization import RULES, recommendations_refresh, rules_catalogue
from providers_app.connectors.base import OPTIONAL_RESOURCE_ATTRIBUTES, RESOURCE_ATTRIBUTES, RESOURCE_KINDS
from providers_app.models import Resource
from tests.costs_app.focus_lines import daily, days_before, line, load, midnight
from tests.factories import CloudAccountFactory, ResourceFactory

LAST_DAY = date(2024, 9, 30)
NOW = datetime(2024, 10, 2, 4, 0, tzinfo=UTC)  # data arrives late: the last data day is two days back
MONTH = Decimal("30.4375")
HOURS = Decimal("730.5")
SEPTEMBER = days_before(LAST_DAY, 30)


def cents(amount) -> Decimal:
    return Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource(
    account, kind: str, rid: str, *, state: str = "", age_days: float = 90, now: datetime = NOW, **attributes
) -> Resource:
    """An inventory row as a connector writes it: resource_type = kind, attributes of RESOURCE_ATTRIBUTES."""
    assert kind in RESOURCE_KINDS
    allowed = (
        set(RESOURCE_ATTRIBUTES["*"]) | set(RESOURCE_ATTRIBUTES[kind]) | set(OPTIONAL_RESOURCE_ATTRIBUTES.get(kind, []))
    )
    assert set(attributes) <= allowed, set(attributes) - allowed
    return Resource.objects.create(
        account=account,
        resource_id=rid,
        resource_type=kind,
        name=rid,
        region="us-east-1",
        state=state,
        attributes={"created_at": iso(now - timedelta(days=age_days)), **attributes},
        first_seen=now - timedelta(days=age_days),
        last_seen=now,
    )


def cpu(values: list[float], *, end: datetime = NOW) -> dict:
    return {"cpu_hourly": values, "cpu_hourly_end": iso(end)}


def steady_cpu(level: float, hours: int = 14 * 24) -> dict:
    return cpu([level] * hours)


def shaped_cpu(*, base: float, p95: float, peak: float) -> dict:
    """336 hourly samples whose percentile_cont p95 is exactly `p95` and maximum `peak`."""
    return cpu([base] * 300 + [p95] * 30 + [peak] * 6)


def recs(rule: str) -> dict[str, Recommendation]:
    return {r.provider_resource_id: r for r in Recommendation.objects.filter(rule=rule)}


@pytest.fixture
def aws(db):
    return CloudAccountFactory(provider="aws")


@pytest.fixture
def quiet_settings(settings):
    """No governance noise in the rule tests: every line is 'tagged' unless a test says otherwise."""
    settings.OPTIMIZATION_REQUIRED_TAG_KEYS = []
    return settings


pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("quiet_settings")]


def test_catalogue_has_every_rule_of_the_issue_with_description_thresholds_and_saving():
    names = [rule.name for rule in RULES]
    assert len(set(names)) == len(names)
    assert set(names) >= {
        "idle_instances",
        "stopped_instances",
        "unattached_volumes",
        "old_snapshots",
        "orphaned_snapshots",
        "unassociated_ips",
        "idle_load_balancers",
        "rightsizing",
        "previous_generation",
        "untagged_spend",
        "commitment_coverage",
    }
    for rule in RULES:
        assert rule.description and rule.closed_reason and rule.saving
        for name in rule.setting_names:
            assert name in rule.description or name in rule.saving or name.endswith("_DAYS"), (rule.name, name)
    catalogue = {entry["name"]: entry for entry in rules_catalogue()}
    assert catalogue["idle_instances"]["thresholds"]["OPTIMIZATION_IDLE_CPU_P95"] == 5.0


# --- idle instances -------------------------------------------------------------------------------------------


def test_idle_instances_needs_low_p95_enough_samples_and_a_running_state(aws, tmp_path):
    # given
    resource(aws, "instance", "i-idle", state="running", instance_type="m5.large", **steady_cpu(2.0))
    resource(
        aws, "instance", "i-busy", state="running", instance_type="m5.large", **shaped_cpu(base=30, p95=60, peak=90)
    )
    resource(aws, "instance", "i-sparse", state="running", instance_type="m5.large", **steady_cpu(1.0, hours=100))
    resource(aws, "instance", "i-stale", state="running", instance_type="m5.large",
             **cpu([1.0] * 336, end=NOW - timedelta(days=10)))  # fmt: skip
    resource(aws, "instance", "i-stopped", state="stopped", instance_type="m5.large", **steady_cpu(0.0))
    resource(aws, "instance", "i-listed", state="running", instance_type="c5.xlarge", **steady_cpu(3.0))
    ids = ("i-idle", "i-busy", "i-sparse", "i-stale", "i-stopped")
    load(aws, [row for rid in ids for row in daily(rid, SEPTEMBER, "2.304")], tmp_path)
    # when
    result = recommendations_refresh(now=NOW)
    # then
    found = recs("idle_instances")
    assert set(found) == {"i-idle", "i-listed"}
    assert result.found["idle_instances"] == 2
    idle = found["i-idle"]
    assert idle.estimated_monthly_saving == cents(Decimal("2.304") * MONTH)
    assert idle.saving_basis == SavingBasis.COST_DATA
    assert idle.details["cpu_p95"] == 2.0 and idle.details["cpu_samples"] == 336
    assert idle.details["thresholds"]["OPTIMIZATION_IDLE_CPU_P95"] == 5.0
    assert idle.resource.resource_id == "i-idle"
    listed = found["i-listed"]  # no cost line: the instance type's list price
    assert listed.saving_basis == SavingBasis.LIST_PRICE
    assert listed.estimated_monthly_saving == cents(Decimal("0.17") * HOURS)
    assert listed.currency == "USD"


def test_idle_instances_thresholds_come_from_settings(aws, settings):
    # given
    resource(aws, "instance", "i-idle", state="running", instance_type="m5.large", **steady_cpu(3.0))
    resource(aws, "instance", "i-sparse", state="running", instance_type="m5.large", **steady_cpu(1.0, hours=100))
    settings.OPTIMIZATION_IDLE_CPU_P95 = 2.5
    settings.OPTIMIZATION_CPU_MIN_COVERAGE = 0.25
    # when
    recommendations_refresh(now=NOW)
    # then: 3 % is not idle under a 2.5 % threshold; 100 of 336 hours is enough coverage at 25 %
    assert set(recs("idle_instances")) == {"i-sparse"}


# --- stopped instances ----------------------------------------------------------------------------------------


def test_stopped_instances_with_storage_still_billed(aws, tmp_path):
    # given
    stopped_at = NOW - timedelta(days=40)
    resource(aws, "instance", "i-stopped", state="stopped", instance_type="m5.large", stopped_at=iso(stopped_at),
             attached_volume_ids=["vol-a"])  # fmt: skip
    resource(aws, "volume", "vol-a", state="in-use", size_gb=100, volume_type="gp3", attached_to=["i-stopped"])
    resource(aws, "instance", "i-recent", state="stopped", instance_type="m5.large",
             stopped_at=iso(NOW - timedelta(days=10)), attached_volume_ids=["vol-b"])  # fmt: skip
    resource(aws, "volume", "vol-b", state="in-use", size_gb=100, volume_type="gp3", attached_to=["i-recent"])
    resource(aws, "instance", "i-bare", state="stopped", instance_type="m5.large", stopped_at=iso(stopped_at),
             attached_volume_ids=[])  # fmt: skip
    # this connector fills only the volume's side of the attachment
    resource(aws, "instance", "i-listed", state="stopped", instance_type="m5.large", stopped_at=iso(stopped_at))
    resource(aws, "volume", "vol-c", state="in-use", size_gb=200, volume_type="gp2", attached_to=["i-listed"])
    storage = {"service_category": "Storage", "service_name": "Amazon Elastic Block Store"}
    load(aws, [*daily("vol-a", SEPTEMBER, "0.27", **storage), *daily("vol-b", SEPTEMBER, "0.27", **storage)], tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("stopped_instances")
    assert set(found) == {"i-stopped", "i-listed"}
    rec = found["i-stopped"]
    assert rec.estimated_monthly_saving == cents(Decimal("0.27") * MONTH)
    assert rec.details["stopped_days"] == 40 and rec.details["attached_volume_ids"] == ["vol-a"]
    assert rec.details["cost_scope"] == {"resource_ids": ["i-stopped", "vol-a"]}
    listed = found["i-listed"]  # no cost line: 200 GiB of gp2 at its list price
    assert (listed.saving_basis, listed.estimated_monthly_saving) == (SavingBasis.LIST_PRICE, Decimal("20.00"))


def test_stopped_instances_days_come_from_settings(aws, settings):
    # given
    resource(aws, "instance", "i-stopped", state="stopped", instance_type="m5.large",
             stopped_at=iso(NOW - timedelta(days=40)), attached_volume_ids=["vol-c"])  # fmt: skip
    resource(aws, "volume", "vol-c", state="in-use", size_gb=200, volume_type="gp2", attached_to=["i-stopped"])
    settings.OPTIMIZATION_STOPPED_DAYS = 45
    # when
    recommendations_refresh(now=NOW)
    # then
    assert recs("stopped_instances") == {}


# --- rightsizing ----------------------------------------------------------------------------------------------


def test_rightsizing_picks_the_cheapest_smaller_size_that_fits_p95_with_headroom_and_the_peak(aws, tmp_path):
    # given: 8 vCPU at p95 15 %, peak 20 %: 2 vCPU runs it at p95 60 % (under 80 %) and peak 80 %
    resource(aws, "instance", "i-big", state="running", instance_type="m5.2xlarge",
             **shaped_cpu(base=10, p95=15, peak=20))  # fmt: skip
    resource(aws, "instance", "i-spiky", state="running", instance_type="m5.2xlarge",
             **shaped_cpu(base=10, p95=15, peak=95))  # fmt: skip
    resource(aws, "instance", "i-busy", state="running", instance_type="m5.2xlarge",
             **shaped_cpu(base=40, p95=50, peak=60))  # fmt: skip
    resource(aws, "instance", "i-burst", state="running", instance_type="t3.xlarge",
             **shaped_cpu(base=10, p95=15, peak=20))  # fmt: skip
    resource(aws, "instance", "i-unknown", state="running", instance_type="x9.weird",
             **shaped_cpu(base=10, p95=15, peak=20))  # fmt: skip
    load(
        aws,
        [
            *daily("i-big", SEPTEMBER, "9.216"),
            # its EBS-optimised storage line is not compute: resizing does not change it
            *daily("i-big", SEPTEMBER, "1.00", service_category="Storage"),
        ],
        tmp_path,
    )
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("rightsizing")
    assert set(found) == {"i-big"}
    rec = found["i-big"]
    assert rec.details["recommended_type"] == "m5.large"
    assert (rec.details["projected_cpu_p95"], rec.details["projected_cpu_max"]) == (60.0, 80.0)
    assert rec.estimated_monthly_saving == cents(cents(Decimal("9.216") * MONTH) * Decimal("0.75"))


def test_rightsizing_headroom_comes_from_settings(aws, settings):
    # given
    resource(aws, "instance", "i-big", state="running", instance_type="m5.2xlarge",
             **shaped_cpu(base=10, p95=15, peak=20))  # fmt: skip
    settings.OPTIMIZATION_RIGHTSIZING_HEADROOM = 0.5
    # when
    recommendations_refresh(now=NOW)
    # then: 2 vCPU would run the p95 at 60 % > 50 %; 4 vCPU at 30 % fits
    rec = recs("rightsizing")["i-big"]
    assert rec.details["recommended_type"] == "m5.xlarge"
    assert rec.saving_basis == SavingBasis.LIST_PRICE
    assert rec.estimated_monthly_saving == cents(cents(Decimal("0.384") * HOURS) * Decimal("0.5"))


@pytest.mark.parametrize(
    ("provider", "instance_type", "smaller", "hourly"),
    [
        ("azure", "Standard_D8s_v5", "Standard_D2s_v5", "0.384"),
        ("gcp", "n2-standard-8", "n2-standard-2", "0.3884"),
    ],
)
def test_rightsizing_knows_azure_and_gcp_families(provider, instance_type, smaller, hourly):
    # given
    account = CloudAccountFactory(provider=provider)
    resource(account, "instance", "vm-1", state="running", instance_type=instance_type,
             **shaped_cpu(base=10, p95=15, peak=20))  # fmt: skip
    # when
    recommendations_refresh(now=NOW)
    # then
    rec = recs("rightsizing")["vm-1"]
    assert rec.details["recommended_type"] == smaller
    assert rec.estimated_monthly_saving == cents(cents(Decimal(hourly) * HOURS) * Decimal("0.75"))


# --- previous generation --------------------------------------------------------------------------------------


def test_previous_generation_moves_to_the_cheaper_current_type(aws, tmp_path):
    # given
    resource(aws, "instance", "i-m4", state="running", instance_type="m4.xlarge")
    resource(aws, "instance", "i-m5", state="running", instance_type="m5.xlarge")
    resource(aws, "instance", "i-m4-huge", state="running", instance_type="m4.10xlarge")  # successor costs more
    resource(aws, "instance", "i-m4-off", state="stopped", instance_type="m4.large")
    azure = CloudAccountFactory(provider="azure")
    resource(azure, "instance", "vm-v2", state="running", instance_type="Standard_D2_v2")
    load(aws, [*daily("i-m4", SEPTEMBER, "4.80"), *daily("i-m5", SEPTEMBER, "4.608")], tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("previous_generation")
    assert set(found) == {"i-m4", "vm-v2"}
    assert found["i-m4"].details["recommended_type"] == "m5.xlarge"
    assert found["i-m4"].estimated_monthly_saving == cents(cents(Decimal("4.80") * MONTH) * Decimal("0.04"))
    assert found["vm-v2"].details["recommended_type"] == "Standard_D2s_v5"
    assert found["vm-v2"].estimated_monthly_saving == cents((Decimal("0.114") - Decimal("0.096")) * HOURS)


def test_previous_generation_respects_the_minimum_saving_and_yields_to_idle(aws, settings):
    # given
    resource(aws, "instance", "i-m4", state="running", instance_type="m4.large")  # saves 0.004/h: 2.92/month
    resource(aws, "instance", "i-m4-idle", state="running", instance_type="m4.2xlarge", **steady_cpu(1.0))
    settings.OPTIMIZATION_MIN_MONTHLY_SAVING = 5
    # when
    result = recommendations_refresh(now=NOW)
    # then
    assert recs("previous_generation") == {}
    assert set(recs("idle_instances")) == {"i-m4-idle"}
    # its rightsizing and previous-generation findings gave way to the idle one: one recommendation per resource
    assert result.superseded == 2


# --- volumes, snapshots, addresses, load balancers ------------------------------------------------------------


def test_unattached_volumes(aws, settings, tmp_path):
    # given
    resource(aws, "volume", "vol-free", state="available", age_days=30, size_gb=50, volume_type="gp3", attached_to=[])
    resource(aws, "volume", "vol-listed", state="available", age_days=30, size_gb=500, volume_type="gp2",
             attached_to=[])  # fmt: skip
    resource(aws, "volume", "vol-used", state="in-use", size_gb=50, volume_type="gp3", attached_to=["i-1"])
    resource(aws, "volume", "vol-new", state="available", age_days=2, size_gb=50, volume_type="gp3", attached_to=[])
    resource(aws, "volume", "vol-unknown", state="available", size_gb=50)  # the connector did not say
    load(aws, daily("vol-free", SEPTEMBER, "0.1333", service_category="Storage"), tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("unattached_volumes")
    assert set(found) == {"vol-free", "vol-listed"}
    assert found["vol-free"].estimated_monthly_saving == cents(Decimal("0.1333") * MONTH)
    assert found["vol-listed"].estimated_monthly_saving == Decimal("50.00")
    # when: the minimum age is raised past the volumes' 30 days
    settings.OPTIMIZATION_UNATTACHED_VOLUME_DAYS = 60
    result = recommendations_refresh(now=NOW)
    # then
    assert result.found["unattached_volumes"] == 0
    assert {r.status for r in recs("unattached_volumes").values()} == {RecommendationStatus.CLOSED}


def test_orphaned_and_old_snapshots(aws):
    # given
    resource(aws, "volume", "vol-live", state="in-use", size_gb=100, attached_to=["i-1"])
    gone = resource(aws, "volume", "vol-gone", state="deleted", size_gb=100, attached_to=[])
    Resource.objects.filter(pk=gone.pk).update(is_terminated=True, terminated_at=NOW - timedelta(days=50))
    snap = {"size_gb": 100}
    resource(aws, "snapshot", "snap-orphan", age_days=20, source_volume_id="vol-gone", **snap)
    resource(aws, "snapshot", "snap-unlisted", age_days=20, source_volume_id="vol-never-seen", **snap)
    resource(aws, "snapshot", "snap-young", age_days=5, source_volume_id="vol-gone", **snap)
    resource(aws, "snapshot", "snap-ok", age_days=20, source_volume_id="vol-live", **snap)
    resource(aws, "snapshot", "snap-old", age_days=400, source_volume_id="vol-live", **snap)
    resource(aws, "snapshot", "snap-old-orphan", age_days=400, source_volume_id="vol-gone", **snap)
    resource(aws, "snapshot", "snap-unknown-source", age_days=20, source_volume_id="", **snap)
    no_volumes = CloudAccountFactory(provider="aws")  # an inventory without volumes cannot call anything orphaned
    resource(no_volumes, "snapshot", "snap-elsewhere", age_days=20, source_volume_id="vol-x", **snap)
    # when
    recommendations_refresh(now=NOW)
    # then
    orphaned, old = recs("orphaned_snapshots"), recs("old_snapshots")
    assert set(orphaned) == {"snap-orphan", "snap-unlisted", "snap-old-orphan"}
    assert set(old) == {"snap-old"}  # snap-old-orphan is the orphaned rule's: one recommendation per resource
    assert orphaned["snap-orphan"].estimated_monthly_saving == Decimal("5.00")  # 100 GiB at 0.05
    assert "deleted" in orphaned["snap-orphan"].title
    assert old["snap-old"].details["age_days"] == 400


def test_snapshot_ages_come_from_settings(aws, settings):
    # given
    gone = resource(aws, "volume", "vol-gone", size_gb=100, attached_to=[])
    Resource.objects.filter(pk=gone.pk).update(is_terminated=True, terminated_at=NOW - timedelta(days=50))
    resource(aws, "snapshot", "snap-orphan", age_days=20, source_volume_id="vol-gone", size_gb=100)
    resource(aws, "snapshot", "snap-old", age_days=400, source_volume_id="", size_gb=100)
    settings.OPTIMIZATION_ORPHANED_SNAPSHOT_DAYS = 30
    settings.OPTIMIZATION_SNAPSHOT_MAX_AGE_DAYS = 500
    # when
    result = recommendations_refresh(now=NOW)
    # then
    assert (result.found["orphaned_snapshots"], result.found["old_snapshots"]) == (0, 0)


def test_unassociated_ips(aws, settings, tmp_path):
    # given
    resource(aws, "ip_address", "eipalloc-free", age_days=10, address="198.51.100.7", associated_with="")
    resource(aws, "ip_address", "eipalloc-used", age_days=10, address="198.51.100.8", associated_with="i-1")
    resource(aws, "ip_address", "eipalloc-new", age_days=1, address="198.51.100.9", associated_with="")
    gcp = CloudAccountFactory(provider="gcp")
    resource(gcp, "ip_address", "projects/p/regions/r/addresses/a", age_days=10, address="203.0.113.5",
             associated_with="")  # fmt: skip
    load(aws, daily("eipalloc-free", SEPTEMBER, "0.12", service_category="Networking"), tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("unassociated_ips")
    assert set(found) == {"eipalloc-free", "projects/p/regions/r/addresses/a"}
    assert found["eipalloc-free"].estimated_monthly_saving == cents(Decimal("0.12") * MONTH)
    assert found["projects/p/regions/r/addresses/a"].estimated_monthly_saving == cents(Decimal("0.01") * HOURS)
    # when
    settings.OPTIMIZATION_UNASSOCIATED_IP_DAYS = 30
    result = recommendations_refresh(now=NOW)
    # then
    assert result.found["unassociated_ips"] == 0


def test_idle_load_balancers(aws, settings):
    # given
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/"
    resource(aws, "load_balancer", arn + "empty", age_days=60, lb_type="application", target_count=0)
    resource(aws, "load_balancer", arn + "quiet", age_days=60, lb_type="application", target_count=2,
             request_count_daily=[5000] * 10 + [3, 0, 10, 2] * 4)  # fmt: skip
    resource(aws, "load_balancer", arn + "busy", age_days=60, lb_type="application", target_count=2,
             request_count_daily=[0] * 13 + [5000])  # fmt: skip
    resource(aws, "load_balancer", arn + "short", age_days=60, lb_type="network", target_count=2,
             request_count_daily=[0] * 5)  # fmt: skip
    resource(aws, "load_balancer", arn + "new", age_days=3, lb_type="application", target_count=0)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("idle_load_balancers")
    assert set(found) == {arn + "empty", arn + "quiet"}
    assert found[arn + "empty"].estimated_monthly_saving == cents(Decimal("0.0225") * HOURS)
    assert "no targets" in found[arn + "empty"].title
    assert found[arn + "quiet"].details["requests_in_window"] == 57  # the last 14 days
    # when: stricter request threshold
    settings.OPTIMIZATION_IDLE_LB_MAX_DAILY_REQUESTS = 5
    recommendations_refresh(now=NOW)
    # then
    assert recs("idle_load_balancers")[arn + "quiet"].status == RecommendationStatus.CLOSED


# --- untagged spend -------------------------------------------------------------------------------------------


def test_untagged_spend_above_the_share_per_account(settings, tmp_path):
    # given: 10/day tagged (key spelled Owner), 5/day untagged, 5/day tax (not taggable) -> 25 % untagged
    settings.OPTIMIZATION_REQUIRED_TAG_KEYS = ["owner"]
    messy, tidy = CloudAccountFactory(provider="aws"), CloudAccountFactory(provider="aws")
    load(
        messy,
        [
            *daily("i-tagged", SEPTEMBER, "10", tags={"Owner": "alice", "team": "web"}),
            *daily("i-untagged", SEPTEMBER, "5", tags={"team": "web"}),
            *daily(None, SEPTEMBER, "5", charge_category="Tax", service_category="Other", service_name="Tax"),
        ],
        tmp_path,
    )
    load(tidy, [*daily("i-a", SEPTEMBER, "19", tags={"owner": "bob"}), *daily("i-b", SEPTEMBER, "1")], tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("untagged_spend")
    assert set(found) == {"untagged-spend:USD"}
    rec = found["untagged-spend:USD"]
    assert rec.account == messy
    assert rec.details["untagged_share"] == "0.2500"
    assert rec.details["top_untagged_resources"][0]["resource_id"] == "i-untagged"
    assert (rec.estimated_monthly_saving, rec.saving_basis) == (Decimal("0.00"), SavingBasis.NONE)
    assert rec.monthly_cost == cents(5 * MONTH)
    # when: a second required key nobody uses, and a share threshold that tolerates it
    settings.OPTIMIZATION_REQUIRED_TAG_KEYS = ["owner", "cost-center"]
    settings.OPTIMIZATION_UNTAGGED_MAX_SHARE = 0.8
    recommendations_refresh(now=NOW)
    # then: messy is 75 % untagged now (under 80 %), tidy 100 %
    statuses = dict(Recommendation.objects.filter(rule="untagged_spend").values_list("account", "status"))
    assert statuses == {messy.id: RecommendationStatus.CLOSED, tidy.id: RecommendationStatus.OPEN}


# --- cost-data-only rules (no inventory needed) ---------------------------------------------------------------


def test_billed_after_termination_flags_terminated_and_stale_resources_still_billed(tmp_path):
    # given
    account = CloudAccountFactory()
    gone = ResourceFactory(
        account=account, resource_id="i-gone", is_terminated=True, terminated_at=midnight(date(2024, 9, 21))
    )
    stale = ResourceFactory(account=account, resource_id="vol-stale", last_seen=NOW - timedelta(days=30))
    ResourceFactory(account=account, resource_id="i-alive", last_seen=NOW)
    ResourceFactory(account=account, resource_id="i-cleanly-gone", is_terminated=True,
                    terminated_at=midnight(date(2024, 9, 10)))  # fmt: skip
    storage = {"service_category": "Storage", "service_name": "Amazon EBS"}
    load(
        account,
        [
            *daily("i-gone", SEPTEMBER, "10", resource_name="web-1"),
            *daily("vol-stale", SEPTEMBER, "4", **storage),
            *daily("i-alive", SEPTEMBER, "10"),
            *daily("i-cleanly-gone", [date(2024, 9, 1), date(2024, 9, 9)], "10"),
        ],
        tmp_path,
    )
    # when
    result = recommendations_refresh(now=NOW)
    # then
    found = recs("billed_after_termination")
    assert set(found) == {"i-gone", "vol-stale"}
    assert result.found["billed_after_termination"] == 2
    assert found["i-gone"].estimated_monthly_saving == cents(10 * MONTH)
    assert found["i-gone"].details["cost_since"] == "100.00"
    assert found["i-gone"].resource_id == gone.id
    assert "web-1" in found["i-gone"].title and "terminated 2024-09-21" in found["i-gone"].title
    assert found["vol-stale"].resource_id == stale.id
    assert found["vol-stale"].estimated_monthly_saving == cents(4 * MONTH)


def test_billed_after_termination_staleness_comes_from_settings(settings, tmp_path):
    # given: a resource discovery has not seen for 30 days, still billed
    account = CloudAccountFactory()
    ResourceFactory(account=account, resource_id="vol-stale", last_seen=NOW - timedelta(days=30))
    load(account, daily("vol-stale", SEPTEMBER, "4", service_category="Storage"), tmp_path)
    settings.OPTIMIZATION_STALE_RESOURCE_DAYS = 45
    # when
    result = recommendations_refresh(now=NOW)
    # then
    assert result.found["billed_after_termination"] == 0


def test_idle_resources_window_comes_from_settings(settings, tmp_path):
    # given: a disk used until ten days ago, idle since
    account = CloudAccountFactory()
    cols = {"service_category": "Storage", "consumed_unit": "GB-Mo"}
    load(
        account,
        [
            *daily("vol-1", SEPTEMBER[:20], "1", consumed_quantity="3", **cols),
            *daily("vol-1", SEPTEMBER[20:], "1", consumed_quantity="0", **cols),
        ],
        tmp_path,
    )
    # when: 30 days see its use; 10 days see only idleness
    over_30 = recommendations_refresh(now=NOW).found["idle_resources"]
    settings.OPTIMIZATION_LOOKBACK_DAYS = 10
    over_10 = recommendations_refresh(now=NOW).found["idle_resources"]
    # then
    assert (over_30, over_10) == (0, 1)


def test_idle_resources_flags_cost_without_consumption_only(tmp_path):
    # given
    account = CloudAccountFactory()
    cols = {"service_category": "Networking", "service_name": "Amazon VPC", "consumed_unit": "Hours"}
    load(
        account,
        [
            *daily("eip-idle", SEPTEMBER, "3.60", consumed_quantity="0", **cols),
            *daily("eip-used", SEPTEMBER, "3.60", consumed_quantity="24", **cols),
            *daily("eip-unknown", SEPTEMBER, "3.60", **cols),  # the provider reports no quantity
            *daily("eip-free", SEPTEMBER, "0", consumed_quantity="0", **cols),
        ],
        tmp_path,
    )
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("idle_resources")
    assert set(found) == {"eip-idle"}
    assert found["eip-idle"].estimated_monthly_saving == cents(Decimal("3.60") * MONTH)
    assert found["eip-idle"].details["cost_in_window"] == "108.00"
    assert found["eip-idle"].resource is None  # not in the inventory: still recommended by its provider id


def test_idle_resources_leaves_an_inventory_resource_to_its_specific_rule(aws, tmp_path):
    # given: an unassociated IP whose cost lines also show zero consumption
    resource(aws, "ip_address", "eipalloc-1", age_days=30, address="198.51.100.1", associated_with="")
    load(aws, daily("eipalloc-1", SEPTEMBER, "0.12", consumed_quantity="0", service_category="Networking"), tmp_path)
    # when
    result = recommendations_refresh(now=NOW)
    # then
    assert set(recs("unassociated_ips")) == {"eipalloc-1"}
    assert recs("idle_resources") == {}
    assert result.superseded == 1


def test_commitment_coverage_commits_to_the_steady_on_demand_floor(settings, tmp_path):
    # given: on-demand EC2 in us-east-1 every day, at least 20/day; a second region covered by a savings plan;
    # a third region with on-demand only on some days (no steady floor)
    account = CloudAccountFactory()
    rows = [line(start=midnight(day), cost="20" if i % 3 == 0 else "35", resource_id=f"i-od-{i % 4}")
            for i, day in enumerate(SEPTEMBER)]  # fmt: skip
    rows += daily("i-sp", SEPTEMBER, "50", region_id="eu-west-1", commitment_discount_id="sp-1",
                  commitment_discount_status="Used", pricing_category="Committed")  # fmt: skip
    rows += daily("i-west", SEPTEMBER[::2], "50", region_id="us-west-2")
    load(account, rows, tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("commitment_coverage")
    assert set(found) == {"commitment:Amazon Elastic Compute Cloud:us-east-1"}
    rec = found["commitment:Amazon Elastic Compute Cloud:us-east-1"]
    assert rec.details["daily_on_demand_floor"] == "20.00"
    assert rec.details["suggested_hourly_commitment"] == "0.83"
    assert rec.estimated_monthly_saving == cents(20 * MONTH * Decimal("0.25"))
    # when: a different assumed discount rate
    settings.OPTIMIZATION_COMMITMENT_DISCOUNT_RATE = 0.4
    recommendations_refresh(now=NOW)
    # then
    rec.refresh_from_db()
    assert rec.estimated_monthly_saving == cents(20 * MONTH * Decimal("0.4"))


def test_unused_commitment_counts_only_the_unused_part(tmp_path):
    # given
    account = CloudAccountFactory()
    ri = {"commitment_discount_id": "arn:ri-1", "commitment_discount_name": "RI m5", "pricing_category": "Committed"}
    load(
        account,
        [
            *daily("i-1", SEPTEMBER, "6", commitment_discount_status="Unused", **ri),
            *daily("i-2", SEPTEMBER, "18", commitment_discount_status="Used", **ri),
            *daily("i-3", SEPTEMBER, "18", commitment_discount_id="arn:ri-2", commitment_discount_status="Used",
                   pricing_category="Committed"),
        ],
        tmp_path,
    )  # fmt: skip
    # when
    recommendations_refresh(now=NOW)
    # then
    found = recs("unused_commitment")
    assert set(found) == {"arn:ri-1"}
    assert found["arn:ri-1"].estimated_monthly_saving == cents(6 * MONTH)


def test_no_waste_no_recommendations(aws, tmp_path):
    # given: a busy, current-generation, attached, tagged estate billed on varying on-demand days only
    resource(aws, "instance", "i-1", state="running", instance_type="m5.large", attached_volume_ids=["vol-1"],
             **shaped_cpu(base=40, p95=70, peak=95))  # fmt: skip
    resource(aws, "volume", "vol-1", state="in-use", size_gb=50, volume_type="gp3", attached_to=["i-1"])
    resource(aws, "ip_address", "eipalloc-1", address="198.51.100.1", associated_with="i-1")
    load(aws, daily("i-1", SEPTEMBER[:20], "2.304", consumed_quantity="24"), tmp_path)
    # when
    result = recommendations_refresh(now=NOW)
    # then
    assert result.accounts == 1
    assert sum(result.found.values()) == 0
    assert Recommendation.objects.count() == 0


def test_list_prices_scale_within_a_family():
    # the catalogue's own invariants, on which rightsizing's saving shares rest
    m5 = {t.name: t for t in cloud_prices.family_members(cloud_prices.instance_type("aws", "m5.large"))}
    assert m5["m5.2xlarge"].hourly_usd == 4 * m5["m5.large"].hourly_usd == Decimal("0.384")
    assert m5["m5.2xlarge"].vcpus == 8
    assert cloud_prices.instance_type("azure", "Standard_DS13_v2").vcpus == 8
    assert cloud_prices.previous_generation_replacement(cloud_prices.instance_type("gcp", "n1-standard-4")).name == (
        "e2-standard-4"
    )


# --- idle databases, titles, nothing-to-gain findings ---------------------------------------------------------


def test_idle_databases_are_up_with_low_cpu_and_enough_samples(aws, tmp_path):
    # given: an idle RDS database, a busy one, one stopped, one with too few samples, one idle without cost lines
    attrs = {"instance_class": "db.m5.large", "engine": "postgres"}
    resource(aws, "database", "db-idle", state="available", **attrs, **steady_cpu(1.5))
    resource(aws, "database", "db-busy", state="available", **attrs, **shaped_cpu(base=20, p95=45, peak=80))
    resource(aws, "database", "db-stopped", state="stopped", **attrs, **steady_cpu(0.0))
    resource(aws, "database", "db-sparse", state="available", **attrs, **steady_cpu(1.0, hours=100))
    resource(aws, "database", "db-unbilled", state="available", **attrs, **steady_cpu(1.0))
    ids = ("db-idle", "db-busy", "db-stopped", "db-sparse")
    load(aws, [r for rid in ids for r in daily(rid, SEPTEMBER, "4.10", service_name="Amazon RDS")], tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then: only the idle one that is up, well sampled and has a cost to save (no list price for databases)
    found = recs("idle_databases")
    assert set(found) == {"db-idle"}
    rec = found["db-idle"]
    assert rec.estimated_monthly_saving == cents(Decimal("4.10") * MONTH)
    assert rec.title == "Database db-idle (postgres, db.m5.large) looks unused: CPU p95 1.5% over 14 days"
    assert rec.details["cpu_p95"] == 1.5 and "snapshot" in rec.details["action"]
    assert rec.details["summary"] == (
        f"Idle databases: {rec.title}. Estimated saving {rec.estimated_monthly_saving:.2f} USD a month (from its cost "
        "lines). Take a final snapshot and delete it, or stop it if it is only needed now and then."
    )


def test_idle_databases_threshold_comes_from_settings(aws, settings, tmp_path):
    # given
    resource(aws, "database", "db-quiet", state="available", engine="mysql", **steady_cpu(4.0))
    load(aws, daily("db-quiet", SEPTEMBER, "3"), tmp_path)
    settings.OPTIMIZATION_IDLE_CPU_P95 = 3.0
    # when
    recommendations_refresh(now=NOW)
    # then: 4 % is not idle under a 3 % threshold
    assert recs("idle_databases") == {}


def test_every_rule_has_a_title_for_people(aws):
    catalogue = rules_catalogue()
    for entry in catalogue:
        assert entry["title"] and entry["title"] != entry["name"] and "_" not in entry["title"], entry
    assert {e["name"]: e["title"] for e in catalogue}["idle_databases"] == "Idle databases"


def test_no_finding_is_raised_when_there_is_nothing_to_gain(settings, tmp_path):
    # given: an account whose only spend is femto-dollars, all untagged (100 % of nothing), on an address that
    # consumed nothing (idle, but saving 0.00); no minimum saving at all
    settings.OPTIMIZATION_REQUIRED_TAG_KEYS = ["owner"]
    settings.OPTIMIZATION_MIN_MONTHLY_SAVING = 0
    account = CloudAccountFactory(provider="aws")
    cols = {"service_category": "Networking", "service_name": "Amazon VPC", "consumed_unit": "Hours"}
    load(account, daily("eip-free", SEPTEMBER, "0.000000000000001", consumed_quantity="0", **cols), tmp_path)
    # when
    result = recommendations_refresh(now=NOW)
    # then: neither the 0.00 untagged spend nor the 0.00 saving is a recommendation
    assert not Recommendation.objects.filter(account=account).exists()
    assert result.found["untagged_spend"] == 0 and result.found["idle_resources"] == 0

    # when: the same address costs 3.60 a day
    load(account, daily("eip-free", SEPTEMBER, "3.60", consumed_quantity="0", **cols), tmp_path)
    recommendations_refresh(now=NOW)
    # then: both are raised (the test is not blind)
    assert set(Recommendation.objects.filter(account=account).values_list("rule", flat=True)) == {
        "idle_resources",
        "untagged_spend",
    }


def test_no_recommendation_concerns_nothing_an_account_without_spend_or_a_zero_saving(settings, tmp_path):
    # given: an account whose untagged, unused resources cost 0.00 (free tier), and an account with no lines
    settings.OPTIMIZATION_REQUIRED_TAG_KEYS = ["owner"]
    free, empty = CloudAccountFactory(provider="aws"), CloudAccountFactory(provider="aws")
    load(free, [*daily("i-free", SEPTEMBER, "0", tags={"team": "web"})], tmp_path)
    # when
    recommendations_refresh(now=NOW)
    # then: no "save 0.00" and no untagged spend raised for either account
    assert not Recommendation.objects.filter(account__in=[free, empty]).exists()

"""Recommendation lifecycle: one record per rule × resource, closed with why, dismissed/done by users (service,
API, admin), and realised savings measured from the cost data that follows; plus the task through a real worker."""

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from costs_app.models import Recommendation, RecommendationStatus
from costs_app.services.optimization import recommendations_refresh
from costs_app.services.recommendations import (
    RecommendationStateError,
    recommendations_dismiss,
    recommendations_mark_done,
    recommendations_reopen,
)
from providers_app.models import Resource
from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.costs_app.focus_lines import daily, days_before, load
from tests.costs_app.test_optimization import iso, resource, shaped_cpu, steady_cpu
from tests.factories import CloudAccountFactory, UserFactory

NOW = datetime(2024, 10, 2, 4, 0, tzinfo=UTC)
MONTH = Decimal("30.4375")

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_tag_policy(settings):
    settings.OPTIMIZATION_REQUIRED_TAG_KEYS = []


def cents(amount) -> Decimal:
    return Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def volume(account, rid: str, *, attached_to=(), size_gb=100):
    return resource(account, "volume", rid, state="available", age_days=30, size_gb=size_gb, volume_type="gp2",
                    attached_to=list(attached_to))  # fmt: skip


def attach(rid: str, to: str) -> None:
    res = Resource.objects.get(resource_id=rid)
    res.attributes = {**res.attributes, "attached_to": [to]}
    res.save()


def by_rid(rule: str = "unattached_volumes") -> dict[str, Recommendation]:
    return {r.provider_resource_id: r for r in Recommendation.objects.filter(rule=rule)}


@pytest.fixture
def aws():
    return CloudAccountFactory(provider="aws")


# --- runs: update, close with why, keep the user's decision -------------------------------------------------


def test_runs_update_not_duplicate_close_with_why_and_keep_dismissals(aws):
    # given
    for rid in ("vol-a", "vol-b", "vol-c"):
        volume(aws, rid)
    first = recommendations_refresh(now=NOW)
    ids = {rid: rec.id for rid, rec in by_rid().items()}
    recommendations_dismiss(ids=[ids["vol-b"], ids["vol-c"]], reason="kept for the DR drill", now=NOW)
    # vol-a and vol-b get attached; vol-c stays unattached (and dismissed)
    attach("vol-a", "i-1")
    attach("vol-b", "i-1")
    later = NOW + timedelta(days=1)
    # when
    second = recommendations_refresh(now=later)
    third = recommendations_refresh(now=later)
    # then
    assert (first.created, second.created, second.updated, second.closed) == (3, 0, 1, 1)
    assert (third.created, third.updated, third.closed) == (0, 1, 0)
    assert Recommendation.objects.count() == 3
    recs = by_rid()
    assert {rid: rec.status for rid, rec in recs.items()} == {
        "vol-a": RecommendationStatus.CLOSED,
        "vol-b": RecommendationStatus.DISMISSED,
        "vol-c": RecommendationStatus.DISMISSED,
    }
    assert recs["vol-a"].status_reason == "No longer applies (2024-10-03): it is attached again, or deleted."
    assert recs["vol-a"].status_changed_at == later
    assert recs["vol-c"].status_reason == "kept for the DR drill"
    assert recs["vol-c"].last_found_at == later  # still found, still dismissed, numbers refreshed
    assert recs["vol-b"].last_found_at == NOW


def test_a_closed_recommendation_reopens_when_the_waste_returns_and_scope_is_respected(aws):
    # given
    other = CloudAccountFactory(provider="aws")
    volume(aws, "vol-a")
    volume(other, "vol-z")
    recommendations_refresh(account_id=aws.id, now=NOW)
    Recommendation.objects.filter(provider_resource_id="vol-a").update(
        status=RecommendationStatus.CLOSED, status_reason="no longer applies"
    )
    # when
    result = recommendations_refresh(account_id=aws.id, now=NOW + timedelta(hours=1))
    # then
    assert result.accounts == 1
    rec = Recommendation.objects.get(provider_resource_id="vol-a")
    assert (rec.status, rec.status_reason, rec.status_changed_at) == (
        RecommendationStatus.OPEN,
        "",
        NOW + timedelta(hours=1),
    )
    assert not Recommendation.objects.filter(account=other).exists()
    assert result.as_dict()["monthly_saving"] == {"USD": "10.00"}  # 100 GiB gp2 at 0.10


def test_close_reasons_name_a_deleted_resource_a_superseding_rule_and_the_minimum_saving(aws, settings):
    # given: an oversized instance, a volume, and a small volume
    resource(aws, "instance", "i-1", state="running", instance_type="m5.2xlarge",
             **shaped_cpu(base=10, p95=15, peak=20))  # fmt: skip
    volume(aws, "vol-gone")
    volume(aws, "vol-small", size_gb=30)  # 3.00/month
    recommendations_refresh(now=NOW)
    assert set(Recommendation.objects.values_list("rule", "provider_resource_id")) == {
        ("rightsizing", "i-1"),
        ("unattached_volumes", "vol-gone"),
        ("unattached_volumes", "vol-small"),
    }
    # the instance goes idle, the volume is deleted, the minimum saving rises above the small volume's
    res = Resource.objects.get(resource_id="i-1")
    res.attributes = {**res.attributes, **steady_cpu(1.0)}
    res.save()
    Resource.objects.filter(resource_id="vol-gone").update(is_terminated=True, terminated_at=NOW)
    settings.OPTIMIZATION_MIN_MONTHLY_SAVING = 5
    # when
    recommendations_refresh(now=NOW)
    # then
    reasons = dict(Recommendation.objects.filter(status="closed").values_list("provider_resource_id", "status_reason"))
    assert reasons == {
        "i-1": "No longer applies (2024-10-02): superseded by the idle_instances recommendation on the same resource.",
        "vol-gone": "No longer applies (2024-10-02): the resource was deleted on 2024-10-02.",
        "vol-small": "No longer applies (2024-10-02): its estimated saving (3.00 USD/month) is below "
        "OPTIMIZATION_MIN_MONTHLY_SAVING (5).",
    }
    assert Recommendation.objects.get(rule="idle_instances").status == RecommendationStatus.OPEN


# --- user decisions -------------------------------------------------------------------------------------------


def test_transitions_check_the_current_status_and_record_who_and_when(aws):
    # given
    volume(aws, "vol-a")
    volume(aws, "vol-b")
    recommendations_refresh(now=NOW)
    a, b = (rec.id for rid, rec in sorted(by_rid().items()))
    user = UserFactory(username="finops-lead")
    # when / then
    with pytest.raises(RecommendationStateError, match="reason for dismissing is required"):
        recommendations_dismiss(ids=[a], reason="  ", now=NOW)
    done = recommendations_mark_done(ids=[a], note="deleted it", user=user, now=NOW)
    assert done.changed == [a]
    refused = recommendations_dismiss(ids=[a, b, 999999], reason="not ours", user=user, now=NOW)
    assert (refused.changed, refused.refused, refused.missing) == ([b], {a: "done"}, [999999])
    rec = Recommendation.objects.get(id=b)
    assert (rec.status, rec.status_reason, rec.status_changed_by, rec.status_changed_at) == (
        "dismissed",
        "not ours",
        user,
        NOW,
    )
    reopened = recommendations_reopen(ids=[a, b], user=user, now=NOW)
    assert reopened.changed == [a, b]
    rec = Recommendation.objects.get(id=a)
    assert (rec.status, rec.done_at, rec.status_reason) == ("open", None, "")


# --- realised savings -----------------------------------------------------------------------------------------


def test_realised_savings_compare_the_cost_before_and_after_done(aws, settings, tmp_path):
    # given: up to Sep 20, an idle instance (10/day) and an oversized one (9.216/day)
    first_now = datetime(2024, 9, 21, 4, 0, tzinfo=UTC)
    resource(aws, "instance", "i-idle", state="running", instance_type="m5.large",
             **{**steady_cpu(1.0), "cpu_hourly_end": iso(first_now)})  # fmt: skip
    resource(aws, "instance", "i-big", state="running", instance_type="m5.2xlarge",
             **{**shaped_cpu(base=10, p95=15, peak=20), "cpu_hourly_end": iso(first_now)})  # fmt: skip
    to_sep_20 = days_before(date(2024, 9, 20), 20)
    load(aws, [*daily("i-idle", to_sep_20, "10"), *daily("i-big", to_sep_20, "9.216")], tmp_path, "first.csv")
    recommendations_refresh(now=first_now)
    idle = Recommendation.objects.get(rule="idle_instances")
    big = Recommendation.objects.get(rule="rightsizing")
    # when: both are marked done on Sep 21
    recommendations_mark_done(ids=[idle.id, big.id], now=datetime(2024, 9, 21, 10, 0, tzinfo=UTC))
    # then: the baseline is measured at once (20 days before), the saving not yet
    idle.refresh_from_db()
    assert (idle.baseline_monthly_cost, idle.realised_monthly_saving) == (cents(10 * MONTH), None)
    assert idle.realised_note == "measuring: 0 of 7 days of cost data after it was done"
    # given: the September export again, complete: i-idle deleted on the 21st, i-big resized (2.304/day) from the 22nd
    Resource.objects.filter(resource_id="i-idle").update(is_terminated=True, terminated_at=first_now)
    to_sep_21 = days_before(date(2024, 9, 21), 21)
    after = days_before(date(2024, 9, 30), 9)
    load(
        aws,
        [*daily("i-idle", to_sep_21, "10"), *daily("i-big", to_sep_21, "9.216"), *daily("i-big", after, "2.304")],
        tmp_path,
        "second.csv",
    )
    # when
    result = recommendations_refresh(now=NOW)
    # then: 9 days after (Sep 22-30); the done day itself counts for neither side
    assert result.realised_measured == 2
    idle.refresh_from_db()
    big.refresh_from_db()
    assert idle.status == big.status == RecommendationStatus.DONE
    assert (idle.realised_monthly_saving, idle.realised_days) == (cents(10 * MONTH), 9)
    assert idle.realised_note == "before: 20 days, after: 9 days of cost data"
    assert big.baseline_monthly_cost == cents(Decimal("9.216") * MONTH)
    assert big.realised_monthly_saving == cents(cents(Decimal("9.216") * MONTH) - Decimal("2.304") * MONTH)
    # when: more days of data are required before a saving is stated
    settings.OPTIMIZATION_REALISED_MIN_DAYS = 10
    recommendations_refresh(now=NOW)
    # then
    idle.refresh_from_db()
    assert (idle.realised_monthly_saving, idle.realised_note) == (
        None,
        "measuring: 9 of 10 days of cost data after it was done",
    )


# --- REST API -------------------------------------------------------------------------------------------------


@pytest.fixture
def changer_client(db):
    """An operator of the team "Default" (the factories' accounts): dismisses and marks done."""
    from providers_app.models import Role
    from providers_app.services.teams import team_default, team_member_set

    user = UserFactory(username="changer")
    team_member_set(team=team_default(), user=user, role=Role.OPERATOR)
    user.user_permissions.add(Permission.objects.get(codename="change_recommendation"))
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def two_recs(aws):
    volume(aws, "vol-a", size_gb=100)
    volume(aws, "vol-b", size_gb=300)
    recommendations_refresh(now=NOW)
    return by_rid()


def test_api_lists_and_filters_recommendations_for_any_signed_in_user(two_recs, viewer_client, api_client):
    # when
    listing = viewer_client.get("/api/v1/recommendations/")
    filtered = viewer_client.get("/api/v1/recommendations/", {"min_saving": "20", "status": "open"})
    bad = viewer_client.get("/api/v1/recommendations/", {"rule": "nope"})
    rules = viewer_client.get("/api/v1/recommendations/rules/")
    # then
    assert listing.status_code == 200
    assert [r["provider_resource_id"] for r in listing.json()["results"]] == ["vol-b", "vol-a"]  # biggest first
    assert listing.json()["results"][0]["estimated_monthly_saving"].startswith("30.00")
    assert [r["provider_resource_id"] for r in filtered.json()["results"]] == ["vol-b"]
    assert bad.status_code == 400 and "Unknown rule" in bad.json()["rule"][0]
    assert "rightsizing" in {r["name"] for r in rules.json()}
    assert api_client.get("/api/v1/recommendations/").status_code == 401


def test_api_dismiss_done_and_reopen_need_the_change_permission(two_recs, viewer_client, changer_client):
    rec = two_recs["vol-a"]
    url = f"/api/v1/recommendations/{rec.id}"
    # a reader may not change anything
    assert viewer_client.post(f"{url}/dismiss/", {"reason": "x"}, format="json").status_code == 403
    # a dismissal needs a reason
    assert changer_client.post(f"{url}/dismiss/", {}, format="json").status_code == 400
    response = changer_client.post(f"{url}/dismiss/", {"reason": "test volume, deleted with the env"}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["status_changed_by"]) == ("dismissed", "changer")
    # done does not apply to a dismissed one: 409 names the status
    conflict = changer_client.post(f"{url}/done/", {}, format="json")
    assert conflict.status_code == 409 and "is dismissed" in conflict.json()["detail"]
    assert changer_client.post(f"{url}/reopen/", {}, format="json").json()["status"] == "open"
    done = changer_client.post(f"{url}/done/", {"note": "deleted"}, format="json").json()
    assert (done["status"], done["status_reason"]) == ("done", "deleted")
    assert done["realised_note"].startswith("no cost lines")  # list-price estimate: nothing to measure against
    assert changer_client.post("/api/v1/recommendations/999999/done/", {}, format="json").status_code == 404


# --- admin ----------------------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def test_admin_dismiss_asks_for_a_reason_then_dismisses(two_recs, admin_client):
    url = reverse("admin:costs_app_recommendation_changelist")
    ids = [str(r.id) for r in two_recs.values()]
    # when: the action without a reason shows the form
    page = admin_client.post(url, {"action": "dismiss", "_selected_action": ids})
    # then
    assert page.status_code == 200
    assert b'name="reason"' in page.content and b"vol-a" in page.content
    # when: with the reason
    done = admin_client.post(url, {"action": "dismiss", "_selected_action": ids, "reason": "lab account"})
    # then
    assert done.status_code == 302
    assert set(Recommendation.objects.values_list("status", "status_reason")) == {("dismissed", "lab account")}


def test_admin_mark_done_and_reopen(two_recs, admin_client):
    url = reverse("admin:costs_app_recommendation_changelist")
    rec = two_recs["vol-a"]
    admin_client.post(url, {"action": "mark_done", "_selected_action": [str(rec.id)]})
    rec.refresh_from_db()
    assert rec.status == "done" and rec.done_at is not None and rec.status_changed_by.username == "root"
    admin_client.post(url, {"action": "reopen", "_selected_action": [str(rec.id)]})
    rec.refresh_from_db()
    assert (rec.status, rec.done_at) == ("open", None)


def test_admin_retention_policies_validate_days_and_enqueue_a_dry_run(admin_client):
    from tasks_app.models import RetentionPolicy

    policy = RetentionPolicy.objects.get(data_class="cost_lines")
    change = reverse("admin:tasks_app_retentionpolicy_change", args=[policy.pk])
    # a retention under the class minimum is refused with the reason
    refused = admin_client.post(change, {"enabled": "on", "days": "30"})
    assert refused.status_code == 200 and b"at least 90 days" in refused.content
    accepted = admin_client.post(change, {"enabled": "on", "days": "400"})
    assert accepted.status_code == 302
    assert RetentionPolicy.objects.get(pk=policy.pk).days == 400
    # the dry-run action enqueues cleanup_old_data through the ledger
    changelist = reverse("admin:tasks_app_retentionpolicy_changelist")
    admin_client.post(changelist, {"action": "dry_run", "_selected_action": [str(policy.pk)]})
    run = TaskRun.objects.get(task_name="cleanup_old_data")
    assert run.kwargs == {"dry_run": True, "classes": ["cost_lines"]}
    assert run.triggered_by == TriggerKind.ADMIN


# --- the task, through a real worker ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_analyze_optimization_task_through_a_worker_updates_and_keeps_decisions(celery_worker_proc, tmp_path):
    from tests.celery_procs import wait_for

    def finished(run: TaskRun) -> TaskRun:
        def done():
            current = TaskRun.objects.get(id=run.id)
            return current if current.state in (RunState.SUCCESS, RunState.FAILURE) else None

        current = wait_for(done, timeout=60, what="analyze_optimization_opportunities to finish")
        assert current.state == RunState.SUCCESS, current.error
        return current

    # given: an inventory as a connector writes it, against the wall clock the worker uses, and its cost lines
    now = timezone.now()
    account = CloudAccountFactory(provider="aws")
    last_days = days_before(now.date() - timedelta(days=1), 30)
    cpu_now = {"cpu_hourly_end": iso(now - timedelta(minutes=5))}
    resource(account, "instance", "i-idle", state="running", instance_type="m5.large", now=now,
             **{**steady_cpu(1.0), **cpu_now})  # fmt: skip
    resource(account, "instance", "i-big", state="running", instance_type="m5.2xlarge", now=now,
             **{**shaped_cpu(base=10, p95=15, peak=20), **cpu_now})  # fmt: skip
    resource(account, "volume", "vol-free", state="available", age_days=30, size_gb=100, volume_type="gp2",
             attached_to=[], now=now)  # fmt: skip
    resource(account, "ip_address", "eipalloc-1", age_days=30, address="198.51.100.1", associated_with="", now=now)
    load(account, [*daily("i-idle", last_days, "2.304"), *daily("i-big", last_days, "9.216")], tmp_path)
    # when
    first = finished(
        task_enqueue(
            task_name="analyze_optimization_opportunities",
            kwargs={"account_id": account.id},
            triggered_by=TriggerKind.API,
        )
    )
    # then
    assert first.queue == "analysis"
    # (the worker runs with the default settings: tag key "owner" required, commitments assumed at 25 %)
    assert {k: v for k, v in first.result["found"].items() if v} == {
        "idle_instances": 1,
        "rightsizing": 1,
        "unattached_volumes": 1,
        "unassociated_ips": 1,
        "untagged_spend": 1,  # nothing is tagged
        "commitment_coverage": 1,  # 11.52/day of on-demand EC2 every day
    }
    assert first.result["created"] == 6
    idle = Recommendation.objects.get(rule="idle_instances")
    assert idle.estimated_monthly_saving == cents(Decimal("2.304") * MONTH)
    # given: the user dismisses the IP, the volume gets attached
    recommendations_dismiss(
        ids=[Recommendation.objects.get(rule="unassociated_ips").id], reason="reserved for the DNS cutover", now=now
    )
    attach("vol-free", "i-big")
    # when: the schedule runs it again (for every account)
    second = finished(task_enqueue(task_name="analyze_optimization_opportunities", kwargs={},
                                   triggered_by=TriggerKind.SCHEDULE))  # fmt: skip
    # then
    assert (second.result["created"], second.result["updated"], second.result["closed"]) == (0, 5, 1)
    assert Recommendation.objects.count() == 6
    statuses = dict(Recommendation.objects.values_list("rule", "status"))
    assert statuses == {
        "idle_instances": "open",
        "rightsizing": "open",
        "unattached_volumes": "closed",
        "unassociated_ips": "dismissed",
        "untagged_spend": "open",
        "commitment_coverage": "open",
    }

"""Anomalies and monitors over the REST API and in the admin: reads for the signed-in, writes by permission."""

from datetime import date
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from rest_framework.test import APIClient

from costs_app.models import Anomaly, AnomalyMonitor, AnomalyStatus, CostAllocationTag, CostTagRollup
from costs_app.services.ingest import focus_file_import
from providers_app.models import Role
from providers_app.services.teams import team_default, team_member_set
from tests.costs_app.anomaly_data import Usage, focus_file, steady
from tests.factories import CloudAccountFactory, NotificationChannelFactory, UserFactory

pytestmark = pytest.mark.django_db


def client_with(*codenames: str, username: str = "someone", role: Role = Role.ACCOUNT_ADMIN) -> APIClient:
    """A member of the team "Default" (the factories' accounts) with `role`, and these permissions."""
    user = UserFactory(username=username)
    team_member_set(team=team_default(), user=user, role=role)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def anomaly(db) -> Anomaly:
    account = CloudAccountFactory(name="prod")
    monitor = AnomalyMonitor.objects.create(name="Services", dimension="service")
    return Anomaly.objects.create(
        monitor=monitor,
        account=account,
        dimension_value="Amazon S3",
        currency="USD",
        start_day=date(2024, 9, 13),
        end_day=date(2024, 9, 14),
        day_count=2,
        expected=Decimal("20"),
        actual=Decimal("180"),
        impact=Decimal("160"),
        impact_percent=Decimal("800"),
        score=9.5,
        days=[{"day": "2024-09-13"}, {"day": "2024-09-14"}],
        root_causes=[{"dimension": "region", "value": "eu-west-1", "impact": "160", "share": 1.0}],
    )


def test_anomalies_are_listed_filtered_and_shown_to_any_signed_in_user(anomaly, viewer_client, api_client):
    # given: a second, acknowledged anomaly of another monitor
    other_monitor = AnomalyMonitor.objects.get_or_create(name="Accounts")[0]
    Anomaly.objects.create(
        monitor=other_monitor,
        account=anomaly.account,
        currency="USD",
        start_day=date(2024, 8, 1),
        end_day=date(2024, 8, 1),
        expected=Decimal("1"),
        actual=Decimal("2"),
        impact=Decimal("1"),
        score=4.0,
        status=AnomalyStatus.ACKNOWLEDGED,
    )
    # when
    everything = viewer_client.get("/api/v1/anomalies/")
    open_only = viewer_client.get("/api/v1/anomalies/?status=open")
    recent = viewer_client.get("/api/v1/anomalies/?since=2024-09-01")
    by_monitor = viewer_client.get(f"/api/v1/anomalies/?monitor={other_monitor.pk}")
    detail = viewer_client.get(f"/api/v1/anomalies/{anomaly.pk}/")
    bad = viewer_client.get("/api/v1/anomalies/?status=closed")
    # then
    assert everything.json()["count"] == 2
    assert [a["id"] for a in open_only.json()["results"]] == [anomaly.pk]
    assert [a["id"] for a in recent.json()["results"]] == [anomaly.pk]
    assert by_monitor.json()["count"] == 1 and by_monitor.json()["results"][0]["monitor_name"] == "Accounts"
    body = detail.json()
    assert (body["series"], body["account_name"], body["dimension"]) == ("Amazon S3", "prod", "service")
    assert (body["start_day"], body["end_day"], body["day_count"]) == ("2024-09-13", "2024-09-14", 2)
    assert Decimal(body["impact"]) == Decimal("160") and body["root_causes"][0]["value"] == "eu-west-1"
    assert bad.status_code == 400
    assert api_client.get("/api/v1/anomalies/").status_code == 401


def test_status_change_needs_the_change_permission_and_records_who_and_why(anomaly, viewer_client):
    # given
    analyst = client_with("change_anomaly", username="analyst", role=Role.OPERATOR)
    # when
    refused = viewer_client.post(f"/api/v1/anomalies/{anomaly.pk}/status/", {"status": "acknowledged"})
    acknowledged = analyst.post(
        f"/api/v1/anomalies/{anomaly.pk}/status/", {"status": "acknowledged", "note": "team paged"}, format="json"
    )
    closed = analyst.post(
        f"/api/v1/anomalies/{anomaly.pk}/status/", {"status": "false_positive", "note": "migration"}, format="json"
    )
    reopened = analyst.post(f"/api/v1/anomalies/{anomaly.pk}/status/", {"status": "resolved"}, format="json")
    unknown = analyst.post(f"/api/v1/anomalies/{anomaly.pk}/status/", {"status": "open"}, format="json")
    missing = analyst.post("/api/v1/anomalies/999999/status/", {"status": "resolved"}, format="json")
    # then
    assert refused.status_code == 403
    assert acknowledged.status_code == 200, acknowledged.content
    assert acknowledged.json()["status"] == "acknowledged"
    body = closed.json()
    assert (body["status"], body["status_note"], body["status_changed_by"]) == (
        "false_positive",
        "migration",
        "analyst",
    )
    assert [(h["from"], h["to"], h["by"]) for h in body["status_history"]] == [
        ("open", "acknowledged", "analyst"),
        ("acknowledged", "false_positive", "analyst"),
    ]
    assert reopened.status_code == 409 and "closed anomaly" in reopened.json()["detail"]
    assert unknown.status_code == 400
    assert missing.status_code == 404
    anomaly.refresh_from_db()
    assert anomaly.status == AnomalyStatus.FALSE_POSITIVE


def test_monitors_are_managed_with_model_permissions(viewer_client):
    # given
    manager = client_with(
        "add_anomalymonitor", "change_anomalymonitor", "delete_anomalymonitor", username="finops-lead"
    )
    channel = NotificationChannelFactory(name="ops")
    # when
    refused = viewer_client.post("/api/v1/anomaly-monitors/", {"name": "x"}, format="json")
    created = manager.post(
        "/api/v1/anomaly-monitors/",
        {
            "name": "Big services",
            "dimension": "service",
            "account": CloudAccountFactory().pk,
            "min_impact": "250",
            "channels": [channel.pk],
        },
        format="json",
    )
    monitor_id = created.json()["id"]
    changed = manager.patch(f"/api/v1/anomaly-monitors/{monitor_id}/", {"min_impact_percent": "50"}, format="json")
    listed = viewer_client.get("/api/v1/anomaly-monitors/")
    # then
    assert refused.status_code == 403
    assert created.status_code == 201, created.content
    assert changed.status_code == 200, changed.content
    monitor = AnomalyMonitor.objects.get(pk=monitor_id)
    assert (monitor.min_impact, monitor.min_impact_percent) == (Decimal("250.00"), Decimal("50.00"))
    assert list(monitor.channels.all()) == [channel]
    assert "Big services" in [m["name"] for m in listed.json()["results"]]
    assert manager.delete(f"/api/v1/anomaly-monitors/{monitor_id}/").status_code == 204


def test_a_tag_monitor_through_the_api_activates_and_backfills_its_key(tmp_path):
    # given: cost lines with a "team" tag, imported before the key was a cost allocation tag
    account = CloudAccountFactory(name="acme")
    usages = [Usage("i-1", tags={"team": "web"}, cost=steady(10, seed=1)), Usage("i-2", cost=steady(5, seed=2))]
    focus_file_import(
        account=account, path=str(focus_file(tmp_path / "f.csv", date(2024, 8, 1), date(2024, 8, 5), usages))
    )
    manager = client_with("add_anomalymonitor", "change_anomalymonitor")
    # when
    missing_key = manager.post("/api/v1/anomaly-monitors/", {"name": "Teams", "dimension": "tag"}, format="json")
    stray_key = manager.post(
        "/api/v1/anomaly-monitors/", {"name": "Teams", "dimension": "account", "tag_key": "team"}, format="json"
    )
    created = manager.post(
        "/api/v1/anomaly-monitors/",
        {"name": "Teams", "dimension": "tag", "tag_key": " team ", "account": account.pk},
        format="json",
    )
    # then
    assert missing_key.status_code == stray_key.status_code == 400
    assert "tag_key" in missing_key.json() and "tag_key" in stray_key.json()
    assert created.status_code == 201, created.content
    assert created.json()["tag_key"] == "team"
    assert CostAllocationTag.objects.get(key="team").is_active
    assert set(CostTagRollup.objects.filter(tag_key="team").values_list("tag_value", flat=True)) == {"web", ""}


def test_admin_monitor_form_activates_the_tag_and_checks_the_key(admin_client):
    # given
    url = reverse("admin:costs_app_anomalymonitor_add")
    form = {
        "name": "Teams",
        "dimension": "tag",
        "tag_key": "",
        "min_impact": "10",
        "min_impact_percent": "20",
        "is_active": "on",
    }
    # when
    missing = admin_client.post(url, form)
    saved = admin_client.post(url, {**form, "tag_key": "team"}, follow=True)
    # then
    assert missing.status_code == 200 and "needs the tag key" in missing.content.decode()
    assert saved.status_code == 200
    assert AnomalyMonitor.objects.get(name="Teams").tag_key == "team"
    assert CostAllocationTag.objects.get(key="team").is_active
    listing = admin_client.get(reverse("admin:costs_app_anomalymonitor_changelist"))
    assert "tag team" in listing.content.decode()

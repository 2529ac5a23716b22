"""detect_cost_anomalies through a real worker on data imported the real way, over several runs and days.

Account, service and tag monitors; per-monitor floors; root causes down to the resource; an anomaly that
grows while it goes on; runs at once that duplicate nothing; status changes through the API and what the
next runs do with them; the notification of a new anomaly (once).
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.test import APIClient

from costs_app.models import Anomaly, AnomalyMonitor, AnomalyStatus, CostAllocationTag
from costs_app.services.ingest import focus_file_import
from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import wait_for
from tests.costs_app.anomaly_data import Usage, focus_file, steady, with_extra
from tests.costs_app.webhook_sink import webhook_sink  # noqa: F401  (fixture)
from tests.factories import CloudAccountFactory, NotificationChannelFactory, UserFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished(run: TaskRun) -> dict:
    def done():
        current = TaskRun.objects.get(id=run.id)
        return current if current.state in (RunState.SUCCESS, RunState.FAILURE) else None

    current = wait_for(done, timeout=90, what=f"{run.task_name} to finish")
    assert current.state == RunState.SUCCESS, current.error
    assert current.queue == "analysis"
    return current.result


def detect(**kwargs) -> TaskRun:
    return task_enqueue(task_name="detect_cost_anomalies", kwargs=kwargs, triggered_by=TriggerKind.COMMAND)


def api_client(*codenames: str, username: str) -> APIClient:
    """A platform admin (the monitors here watch every account) holding only these model permissions."""
    user = UserFactory(username=username)
    user.user_permissions.add(*Permission.objects.filter(codename__in=[*codenames, "platform_admin"]))
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_anomalies_through_the_worker(celery_worker_proc, webhook_sink, tmp_path):  # noqa: F811
    # given: 51 days of data ending three days ago; the data team's ETL instance jumps by 300 on the last day
    spike_day = timezone.now().date() - timedelta(days=3)
    first_day = spike_day - timedelta(days=50)
    spike = {spike_day + timedelta(days=i): 300.0 for i in range(3)}
    acme = CloudAccountFactory(name="acme")
    calm = CloudAccountFactory(name="calm")
    etl_cost = with_extra(steady(20, seed=2), spike)
    acme_usages = [
        Usage("i-web", tags={"team": "web"}, cost=steady(100, seed=1)),
        Usage("i-etl", region="eu-west-1", sub_account="222", tags={"team": "data"}, cost=etl_cost),
        Usage("bucket", service="Amazon Simple Storage Service", cost=steady(50, seed=3)),
        Usage("i-shared", cost=steady(30, seed=4)),
    ]
    calm_usages = [Usage("i-calm", tags={"team": "web"}, cost=steady(80, seed=5))]

    def load(account, usages, last_day):
        path = focus_file(tmp_path / f"{account.name}-{last_day}.csv", first_day, last_day, usages)
        focus_file_import(account=account, path=str(path))

    load(acme, acme_usages, spike_day)
    load(calm, calm_usages, spike_day)
    accounts = AnomalyMonitor.objects.get_or_create(name="Accounts", defaults={"dimension": "account"})[0]
    services = AnomalyMonitor.objects.get_or_create(name="Services per account", defaults={"dimension": "service"})[0]
    huge_only = AnomalyMonitor.objects.create(name="Huge only", min_impact=Decimal("5000"))
    hook = NotificationChannelFactory(name="data-team-hook", kind="webhook", target=webhook_sink.url("/teams"))
    # the tag monitor is added through the API, after the data: its key is activated and back-filled
    lead = api_client("add_anomalymonitor", "change_anomalymonitor", username="lead")
    created = lead.post(
        "/api/v1/anomaly-monitors/",
        {"name": "Teams", "dimension": "tag", "tag_key": "team", "channels": [hook.pk]},
        format="json",
    )
    assert created.status_code == 201, created.content
    teams = AnomalyMonitor.objects.get(pk=created.json()["id"])
    assert CostAllocationTag.objects.get(key="team").is_active

    # when: the first run
    first = finished(detect())
    # then: one anomaly per series that jumped: the account, its EC2, the data team; nothing for "calm"
    assert first["accounts"] == 2 and first["monitors"] == 4
    # series: 2 accounts × (Accounts, Huge only); services: acme EC2 and S3, calm EC2; team values: acme web,
    # data and "" (untagged), calm web
    assert first["series"] == 2 * 2 + 3 + 4
    assert first["created"] == 3 and first["notified"] == 1
    found = {(a.monitor_id, a.dimension_value) for a in Anomaly.objects.all()}
    assert found == {(accounts.pk, ""), (services.pk, "Amazon Elastic Compute Cloud"), (teams.pk, "data")}
    assert not Anomaly.objects.filter(account=calm).exists()
    assert not Anomaly.objects.filter(monitor=huge_only).exists()
    account_anomaly = Anomaly.objects.get(monitor=accounts)
    assert account_anomaly.start_day == account_anomaly.end_day == spike_day
    assert Decimal("280") < account_anomaly.impact < Decimal("320")
    causes = {(c["dimension"], c.get("key"), c["value"]) for c in account_anomaly.root_causes}
    assert causes == {
        ("service", None, "Amazon Elastic Compute Cloud"),
        ("region", None, "eu-west-1"),
        ("sub_account", None, "222"),
        ("tag", "team", "data"),
        ("resource", None, "i-etl"),
    }
    [message] = webhook_sink.received
    assert message.json["event"] == "cost_anomaly" and message.json["dimension_value"] == "data"

    # when: the next day arrives, still high, and the account's run judges it
    load(acme, acme_usages, spike_day + timedelta(days=1))
    second = finished(detect(account_id=acme.id))
    # then: the same three anomalies, one day longer; nothing new, nothing sent again
    assert (second["created"], second["updated"]) == (0, 3)
    grown = Anomaly.objects.get(pk=account_anomaly.pk)
    assert (grown.start_day, grown.end_day, grown.day_count) == (spike_day, spike_day + timedelta(days=1), 2)
    assert Decimal("570") < grown.impact < Decimal("630")
    assert grown.impact == sum(Decimal(d["impact"]) for d in grown.days)
    assert Anomaly.objects.count() == 3 and len(webhook_sink.received) == 1

    # when: two runs at once (all accounts, and acme alone) with no new data
    both = [detect(), detect(account_id=acme.id)]
    results = [finished(run) for run in both]
    # then: no duplicate, nothing rewritten
    assert [(r["created"], r["updated"]) for r in results] == [(0, 0), (0, 0)]
    assert Anomaly.objects.count() == 3

    # when: people review them through the API
    analyst = api_client("change_anomaly", username="analyst")
    service_anomaly = Anomaly.objects.get(monitor=services)
    fp = analyst.post(
        f"/api/v1/anomalies/{service_anomaly.pk}/status/",
        {"status": "false_positive", "note": "ETL backfill, planned"},
        format="json",
    )
    ack = analyst.post(f"/api/v1/anomalies/{grown.pk}/status/", {"status": "acknowledged"}, format="json")
    assert fp.status_code == ack.status_code == 200
    # and the spend stays high one more day
    load(acme, acme_usages, spike_day + timedelta(days=2))
    third = finished(detect())
    # then: the acknowledged and the open one grow; the false positive is left as it was and the new day of
    # that series is a new anomaly
    assert (third["created"], third["updated"]) == (1, 2)
    assert Anomaly.objects.get(pk=grown.pk).day_count == 3
    assert Anomaly.objects.get(pk=grown.pk).status == AnomalyStatus.ACKNOWLEDGED
    assert Anomaly.objects.get(monitor=teams).day_count == 3
    dismissed = Anomaly.objects.get(pk=service_anomaly.pk)
    assert (dismissed.status, dismissed.day_count, dismissed.status_changed_by.username) == (
        AnomalyStatus.FALSE_POSITIVE,
        2,
        "analyst",
    )
    recurrence = Anomaly.objects.get(monitor=services, status=AnomalyStatus.OPEN)
    assert recurrence.start_day == spike_day + timedelta(days=2)
    assert Anomaly.objects.count() == 4
    assert len(webhook_sink.received) == 1  # the teams' anomaly grew; it was told about once

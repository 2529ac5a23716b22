"""The admin as an operator uses it: pages load, secrets never show, task actions work and are permission-gated."""

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from costs_app.models import (
    Anomaly,
    AnomalyMonitor,
    AnomalyStatus,
    BudgetAlert,
    ChannelKind,
    CostDailyRollup,
    NotificationChannel,
    Recommendation,
    RecommendationStatus,
)
from providers_app.models import CloudAccount, Credential
from providers_app.services.teams import team_default
from tasks_app import ledger
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tests.celery_procs import flush_broker
from tests.factories import (
    BudgetFactory,
    CloudAccountFactory,
    CostLineItemFactory,
    NotificationChannelFactory,
    ResourceFactory,
    UserFactory,
)

SECRET = '{"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETVALUE"}'
SECRET_PART = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETVALUE"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXsupersecrettoken"

pytestmark = pytest.mark.django_db


def queued_run(task_name: str = "monitor_budget", **kwargs) -> TaskRun:
    return ledger.record_enqueue(
        task_name=task_name,
        celery_task_id=f"cel-{TaskRun.objects.count() + 1}-{task_name}",
        queue="monitoring",
        args=[],
        kwargs=kwargs,
        triggered_by=TriggerKind.API,
        correlation_id="corr-admin-test",
    )


def dead_letter(task_name: str = "monitor_budget") -> DeadLetter:
    run = queued_run(task_name, account_id=1)
    TaskRun.objects.filter(id=run.id).update(state=RunState.FAILURE, error="boom", error_type="TransientError")
    return DeadLetter.objects.create(
        run=run, task_name=task_name, kwargs={"account_id": 1}, queue="monitoring", error="boom", retries=3
    )


def broker_messages(queue: str) -> list[dict]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def action(client, model: str, name: str, ids) -> object:
    url = reverse(f"admin:{model.replace('.', '_')}_changelist")
    return client.post(url, {"action": name, "_selected_action": [str(i) for i in ids]}, follow=True)


@pytest.fixture
def staff_viewer(db):
    """Staff who may look at task pages (organisation-wide ones too: a platform admin) but lacks
    tasks_app.trigger_tasks."""
    viewer = UserFactory(username="staff-viewer", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(
            codename__in=[
                "view_taskrun",
                "view_deadletter",
                "view_periodictask",
                "change_periodictask",
                "platform_admin",
            ]
        )
    )
    return viewer


@pytest.fixture
def staff_operator(staff_viewer):
    operator = UserFactory(username="staff-operator", is_staff=True)
    operator.user_permissions.add(*staff_viewer.user_permissions.all())
    operator.user_permissions.add(Permission.objects.get(codename="trigger_tasks"))
    return operator


@pytest.fixture
def every_kind_of_row(db):
    account = CloudAccountFactory(name="prod-aws")
    credential = Credential(account=account, kind="access_key")
    credential.set_secret(json.loads(SECRET))
    credential.save()
    resource = ResourceFactory(account=account)
    CostLineItemFactory(account=account, resource_id=resource.resource_id)
    CostDailyRollup.objects.create(
        account=account,
        day=date(2024, 9, 15),
        billing_period_start=datetime(2024, 9, 1, tzinfo=UTC),
        service_name="Amazon Elastic Compute Cloud",
        billing_currency="USD",
        billed_cost=Decimal("10"),
        line_count=1,
    )
    channel = NotificationChannelFactory(name="ops-slack", kind=ChannelKind.SLACK, target=WEBHOOK)
    budget = BudgetFactory(name="prod monthly", account=account, thresholds=[50, 80, 100])
    budget.channels.add(channel)
    BudgetAlert.objects.create(
        budget=budget, period_start=date(2024, 9, 1), threshold=50, spend=Decimal("600"), percentage=60
    )
    monitor = AnomalyMonitor.objects.create(name="S3 per account", dimension="service")
    Anomaly.objects.create(
        monitor=monitor,
        account=account,
        dimension_value="Amazon S3",
        start_day=date(2024, 9, 14),
        end_day=date(2024, 9, 14),
        currency="USD",
        expected=Decimal("10"),
        actual=Decimal("90"),
        impact=Decimal("80"),
        impact_percent=Decimal("800"),
        score=5.0,
        days=[
            {
                "day": "2024-09-14",
                "expected": "10",
                "lower": "8",
                "upper": "12",
                "actual": "90",
                "impact": "80",
                "impact_percent": 800.0,
                "score": 5.0,
            }
        ],
        root_causes=[
            {
                "dimension": "tag",
                "key": "team",
                "value": "data",
                "expected": "10",
                "actual": "90",
                "impact": "80",
                "share": 1.0,
            }
        ],
    )
    Recommendation.objects.create(
        account=account,
        rule="stale_resource",
        provider_resource_id=resource.resource_id,
        title="Stale resource still billed",
        estimated_monthly_saving=Decimal("42"),
        currency="USD",
    )
    dead_letter()
    return account


def test_every_registered_model_has_working_changelist_and_change_form(admin_client, every_kind_of_row):
    # given every registered model (ours, beat's, results', auth's) and a row for each of ours
    failures = []
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        # when
        changelist = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        obj = model._default_manager.first()
        if obj is not None:
            detail = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
        elif model_admin.has_add_permission(type("R", (), {"user": UserFactory(is_superuser=True)})()):
            detail = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
        else:
            detail = changelist
        # then
        for page, response in (("changelist", changelist), ("detail", detail)):
            if response.status_code != 200:
                failures.append(f"{opts.label} {page}: {response.status_code}")
    assert failures == []


def test_changelists_with_filters_and_search_load(admin_client, every_kind_of_row):
    # given
    run = TaskRun.objects.get()
    other = queued_run("detect_cost_anomalies")
    urls = [
        reverse("admin:tasks_app_taskrun_changelist") + f"?q={run.celery_task_id}&state__exact=QUEUED",
        reverse("admin:tasks_app_taskrun_changelist") + "?task_name=monitor_budget&queue=monitoring",
        reverse("admin:tasks_app_deadletter_changelist") + "?replayed=no",
        reverse("admin:costs_app_costlineitem_changelist") + "?charge_category=Usage&period=2024-09&q=nothing",
        reverse("admin:costs_app_costdailyrollup_changelist") + "?period=2024-09",
        reverse("admin:providers_app_resource_changelist") + "?is_terminated__exact=0&account__provider=focus",
        reverse("admin:costs_app_budgetalert_changelist") + "?notified=no",
    ]
    # when
    responses = [admin_client.get(url) for url in urls]
    # then
    assert [r.status_code for r in responses] == [200] * len(urls)
    assert run.celery_task_id in responses[0].content.decode()
    assert other.celery_task_id not in responses[0].content.decode()


def test_account_credential_is_write_only_and_encrypted(admin_client):
    # given
    add_url = reverse("admin:providers_app_cloudaccount_add")
    form = {
        "name": "new-aws",
        "team": str(team_default().pk),
        "provider": "aws",
        "external_id": "111122223333",
        "is_active": "on",
        "settings": "{}",
        "credential-TOTAL_FORMS": "1",
        "credential-INITIAL_FORMS": "0",
        "credential-MIN_NUM_FORMS": "0",
        "credential-MAX_NUM_FORMS": "1",
        "credential-0-kind": "access_key",
        "credential-0-secret": SECRET,
    }
    # when
    response = admin_client.post(add_url, form, follow=True)
    # then it is stored encrypted and decrypts to what was typed
    assert response.status_code == 200
    credential = Credential.objects.get(account__name="new-aws")
    assert credential.get_secret() == json.loads(SECRET)
    assert SECRET_PART not in credential.ciphertext
    assert credential.hint
    # and no admin page shows it
    account = credential.account
    pages = [
        response,
        admin_client.get(reverse("admin:providers_app_cloudaccount_change", args=[account.pk])),
        admin_client.get(reverse("admin:providers_app_cloudaccount_changelist")),
    ]
    for page in pages:
        html = page.content.decode()
        assert SECRET_PART not in html
        assert credential.ciphertext not in html
    assert credential.hint in pages[1].content.decode()


def test_empty_secret_keeps_the_stored_one_and_a_new_one_replaces_it(admin_client, every_kind_of_row):
    # given
    account = every_kind_of_row
    credential = account.credential
    change_url = reverse("admin:providers_app_cloudaccount_change", args=[account.pk])
    form = {
        "name": account.name,
        "team": str(account.team_id),
        "provider": account.provider,
        "external_id": account.external_id,
        "is_active": "on",
        "settings": '{"path": "/tmp"}',  # an existing path: a missing one is refused
        "credential-TOTAL_FORMS": "1",
        "credential-INITIAL_FORMS": "1",
        "credential-MIN_NUM_FORMS": "0",
        "credential-MAX_NUM_FORMS": "1",
        "credential-0-id": str(credential.pk),
        "credential-0-account": str(account.pk),
        "credential-0-kind": "access_key",
        "credential-0-secret": "",
    }
    # when saved with the secret left empty
    admin_client.post(change_url, form, follow=True)
    # then the secret is unchanged, the other fields saved
    account.refresh_from_db()
    assert account.settings == {"path": "/tmp"}
    assert Credential.objects.get(pk=credential.pk).get_secret() == json.loads(SECRET)
    # when a new secret is typed
    admin_client.post(change_url, {**form, "credential-0-secret": "plain-token-123456789"}, follow=True)
    # then it replaces the old one
    assert Credential.objects.get(pk=credential.pk).get_secret() == "plain-token-123456789"


def test_invalid_form_does_not_echo_the_secret(admin_client):
    # given a form that fails validation elsewhere (no name) with a secret typed in
    form = {
        "name": "",
        "provider": "aws",
        "settings": "{}",
        "credential-TOTAL_FORMS": "1",
        "credential-INITIAL_FORMS": "0",
        "credential-MIN_NUM_FORMS": "0",
        "credential-MAX_NUM_FORMS": "1",
        "credential-0-kind": "access_key",
        "credential-0-secret": SECRET,
    }
    # when
    response = admin_client.post(reverse("admin:providers_app_cloudaccount_add"), form)
    # then the page is redisplayed with errors but without the secret
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert SECRET_PART not in response.content.decode()
    assert not CloudAccount.objects.filter(credential__isnull=False).exists()


def test_channel_target_is_write_only(admin_client):
    # given
    form = {"name": "alerts", "kind": "slack", "target": WEBHOOK, "is_active": "on"}
    # when
    admin_client.post(reverse("admin:costs_app_notificationchannel_add"), form, follow=True)
    channel = NotificationChannel.objects.get(name="alerts")
    pages = [
        admin_client.get(reverse("admin:costs_app_notificationchannel_change", args=[channel.pk])),
        admin_client.get(reverse("admin:costs_app_notificationchannel_changelist")),
    ]
    # then
    assert channel.get_target() == WEBHOOK
    for page in pages:
        assert "supersecrettoken" not in page.content.decode()
        assert channel.target_hint in page.content.decode()
    # and saving without a target keeps it
    admin_client.post(
        reverse("admin:costs_app_notificationchannel_change", args=[channel.pk]),
        {"name": "alerts-renamed", "kind": "slack", "target": "", "is_active": "on"},
    )
    channel.refresh_from_db()
    assert channel.name == "alerts-renamed"
    assert channel.get_target() == WEBHOOK


def test_channel_with_bad_target_is_refused_without_echo(admin_client):
    # when
    response = admin_client.post(
        reverse("admin:costs_app_notificationchannel_add"),
        {"name": "bad", "kind": "webhook", "target": "not a url secretsecret", "is_active": "on"},
    )
    # then
    assert response.status_code == 200
    assert "not a valid URL" in response.content.decode()
    assert "secretsecret" not in response.content.decode()
    assert not NotificationChannel.objects.filter(name="bad").exists()


def test_run_schedule_now_records_an_admin_run_and_publishes_it(
    admin_client, admin_user, django_capture_on_commit_callbacks
):
    # given
    flush_broker()
    schedule = PeriodicTask.objects.get(task="monitor_budget")
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = action(admin_client, "django_celery_beat.periodictask", "run_now", [schedule.pk])
    # then
    run = TaskRun.objects.get(task_name="monitor_budget")
    assert run.state == RunState.QUEUED
    assert run.triggered_by == TriggerKind.ADMIN
    assert run.user == admin_user
    assert run.trigger_detail == schedule.name
    assert run.celery_task_id in response.content.decode()
    assert [m["headers"]["id"] for m in broker_messages("monitoring")] == [run.celery_task_id]


def test_cancel_action_marks_queued_runs_cancelled(admin_client):
    # given
    run = queued_run()
    # when
    response = action(admin_client, "tasks_app.taskrun", "cancel_runs", [run.pk])
    # then
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED
    assert "Cancelled 1" in response.content.decode()


def test_cancel_action_reports_finished_runs_unchanged(admin_client):
    # given
    run = queued_run()
    TaskRun.objects.filter(id=run.id).update(state=RunState.SUCCESS)
    # when
    response = action(admin_client, "tasks_app.taskrun", "cancel_runs", [run.pk])
    # then
    assert TaskRun.objects.get(id=run.id).state == RunState.SUCCESS
    assert "already success" in response.content.decode()


def test_run_again_enqueues_same_kwargs(admin_client, admin_user, django_capture_on_commit_callbacks):
    # given
    flush_broker()
    original = queued_run("monitor_budget", budget_id=7)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        action(admin_client, "tasks_app.taskrun", "run_again", [original.pk])
    # then
    rerun = TaskRun.objects.exclude(id=original.id).get()
    assert (rerun.task_name, rerun.kwargs, rerun.triggered_by, rerun.user) == (
        "monitor_budget",
        {"budget_id": 7},
        TriggerKind.ADMIN,
        admin_user,
    )
    assert [m["headers"]["id"] for m in broker_messages("monitoring")] == [rerun.celery_task_id]


def test_replay_action_enqueues_the_dead_letter(admin_client, admin_user, django_capture_on_commit_callbacks):
    # given
    flush_broker()
    letter = dead_letter()
    # when
    with django_capture_on_commit_callbacks(execute=True):
        action(admin_client, "tasks_app.deadletter", "replay", [letter.pk])
    # then
    letter.refresh_from_db()
    assert letter.replayed_at is not None
    replay = letter.replay_run
    assert (replay.triggered_by, replay.user, replay.kwargs, replay.state) == (
        TriggerKind.ADMIN,
        admin_user,
        {"account_id": 1},
        RunState.QUEUED,
    )
    assert [m["headers"]["id"] for m in broker_messages("monitoring")] == [replay.celery_task_id]


def test_staff_without_trigger_permission_neither_sees_nor_runs_actions(client, staff_viewer):
    # given
    client.force_login(staff_viewer)
    run = queued_run()
    letter = dead_letter()
    schedule = PeriodicTask.objects.get(task="monitor_budget")
    # when
    pages = {
        "runs": client.get(reverse("admin:tasks_app_taskrun_changelist")),
        "letters": client.get(reverse("admin:tasks_app_deadletter_changelist")),
        "schedules": client.get(reverse("admin:django_celery_beat_periodictask_changelist")),
    }
    action(client, "tasks_app.taskrun", "cancel_runs", [run.pk])
    action(client, "tasks_app.taskrun", "run_again", [run.pk])
    action(client, "tasks_app.deadletter", "replay", [letter.pk])
    action(client, "django_celery_beat.periodictask", "run_now", [schedule.pk])
    # then the pages load without the actions, and nothing happened
    assert all(p.status_code == 200 for p in pages.values())
    assert 'value="cancel_runs"' not in pages["runs"].content.decode()
    assert 'value="replay"' not in pages["letters"].content.decode()
    assert 'value="run_now"' not in pages["schedules"].content.decode()
    assert 'value="enable_tasks"' in pages["schedules"].content.decode()
    assert TaskRun.objects.get(id=run.id).state == RunState.QUEUED
    assert TaskRun.objects.count() == 2
    letter.refresh_from_db()
    assert letter.replayed_at is None


def test_staff_with_trigger_permission_sees_and_runs_actions(client, staff_operator):
    # given
    client.force_login(staff_operator)
    run = queued_run()
    # when
    page = client.get(reverse("admin:tasks_app_taskrun_changelist"))
    action(client, "tasks_app.taskrun", "cancel_runs", [run.pk])
    # then
    assert 'value="cancel_runs"' in page.content.decode()
    assert TaskRun.objects.get(id=run.id).state == RunState.CANCELLED


def test_task_run_is_read_only(admin_client):
    # given
    run = queued_run()
    # when
    change = admin_client.get(reverse("admin:tasks_app_taskrun_change", args=[run.pk]))
    add = admin_client.get(reverse("admin:tasks_app_taskrun_add"))
    delete = admin_client.get(reverse("admin:tasks_app_taskrun_delete", args=[run.pk]))
    # then
    assert change.status_code == 200
    assert 'name="_save"' not in change.content.decode()
    assert add.status_code == 403
    assert delete.status_code == 403


def test_anomaly_and_recommendation_status_actions(admin_client, every_kind_of_row):
    # given
    anomaly = Anomaly.objects.get()
    recommendation = Recommendation.objects.get()
    # when / then
    # the action first asks for a note; nothing changes until it is applied
    page = action(admin_client, "costs_app.anomaly", "acknowledge", [anomaly.pk])
    anomaly.refresh_from_db()
    assert 'name="note"' in page.content.decode() and anomaly.status == AnomalyStatus.OPEN
    for name, expected in (
        ("acknowledge", AnomalyStatus.ACKNOWLEDGED),
        ("false_positive", AnomalyStatus.FALSE_POSITIVE),
    ):
        url = reverse("admin:costs_app_anomaly_changelist")
        admin_client.post(
            url, {"action": name, "_selected_action": [anomaly.pk], "apply": "1", "note": f"{name} it"}, follow=True
        )
        anomaly.refresh_from_db()
        assert anomaly.status == expected
    assert [(h["to"], h["by"], h["note"]) for h in anomaly.status_history] == [
        ("acknowledged", "admin", "acknowledge it"),
        ("false_positive", "admin", "false_positive it"),
    ]
    # a closed anomaly stays closed, and the page says why
    refused = admin_client.post(
        reverse("admin:costs_app_anomaly_changelist"),
        {"action": "resolve", "_selected_action": [anomaly.pk], "apply": "1", "note": ""},
        follow=True,
    )
    anomaly.refresh_from_db()
    assert anomaly.status == AnomalyStatus.FALSE_POSITIVE
    assert "closed anomaly does not change again" in refused.content.decode()
    # dismissing asks for a reason first (tests/costs_app/test_recommendations.py covers the form)
    admin_client.post(
        reverse("admin:costs_app_recommendation_changelist"),
        {"action": "dismiss", "_selected_action": [str(recommendation.pk)], "reason": "not ours"},
    )
    recommendation.refresh_from_db()
    assert (recommendation.status, recommendation.status_reason) == (RecommendationStatus.DISMISSED, "not ours")
    action(admin_client, "costs_app.recommendation", "reopen", [recommendation.pk])
    action(admin_client, "costs_app.recommendation", "mark_done", [recommendation.pk])
    recommendation.refresh_from_db()
    assert recommendation.status == RecommendationStatus.DONE


def test_budget_thresholds_are_validated(admin_client):
    # when
    response = admin_client.post(
        reverse("admin:costs_app_budget_add"),
        {"name": "bad", "amount": "100", "currency": "USD", "period": "monthly", "thresholds": "[50, -1]"},
    )
    ok = admin_client.post(
        reverse("admin:costs_app_budget_add"),
        {
            "name": "good",
            "amount": "100",
            "currency": "USD",
            "period": "monthly",
            "thresholds": '[100, 50, 80, {"value": 100, "basis": "forecasted"}]',
            "is_active": "on",
            "alerts-TOTAL_FORMS": "0",
            "alerts-INITIAL_FORMS": "0",
        },
    )
    # then
    assert "threshold 2 (-1): the value must be a positive number" in response.content.decode()
    assert ok.status_code == 302
    from costs_app.models import Budget

    assert [t.label() for t in Budget.objects.get(name="good").threshold_list()] == [
        "50% actual",
        "80% actual",
        "100% actual",
        "100% forecasted",
    ]


def test_admin_index_shows_the_task_system_box(admin_client):
    # given two queued runs, one running, one dead letter (its run failed just now)
    queued_run()
    queued_run("detect_cost_anomalies")
    started = queued_run("cleanup_old_data")
    TaskRun.objects.filter(id=started.id).update(state=RunState.STARTED)
    dead_letter()
    # when
    html = admin_client.get(reverse("admin:index")).content.decode()
    # then
    assert "Task system" in html
    assert '<td id="task-system-queued">2</td>' in html
    assert '<td id="task-system-started">1</td>' in html
    assert 'id="task-system-failed" class="finops-alert">1</td>' in html
    assert 'id="task-system-dead-letters" class="finops-alert">1</td>' in html
    assert "Recent actions" in html


def test_admin_index_hides_the_box_from_staff_who_cannot_see_runs(client):
    # given
    client.force_login(UserFactory(username="plain-staff", is_staff=True))
    # when
    html = client.get(reverse("admin:index")).content.decode()
    # then
    assert "Task system" not in html


def test_run_now_of_a_housekeeping_schedule_publishes_it_untracked(admin_client, django_capture_on_commit_callbacks):
    # given the reconciler's schedule: a plain Celery task, deliberately outside the ledger
    flush_broker()
    schedule = PeriodicTask.objects.get(task="reconcile_task_runs")
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = action(admin_client, "django_celery_beat.periodictask", "run_now", [schedule.pk])
    # then
    assert not TaskRun.objects.exists()
    assert [m["headers"]["task"] for m in broker_messages("default")] == ["reconcile_task_runs"]
    assert "not tracked in the ledger" in response.content.decode()

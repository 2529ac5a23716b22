"""The control room: its JSON (scope, statistics, schedules) and its buttons, which run the admin actions and
refuse whoever may not run them."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks_app import ledger
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tests.celery_procs import flush_broker
from tests.factories import CloudAccountFactory, TeamFactory

pytestmark = pytest.mark.django_db
API = "/api/v1/tasks/control-room"


def run(task_name="monitor_budget", *, account=None, state=RunState.QUEUED, duration_ms=None, ago=timedelta()):
    record = ledger.record_enqueue(
        task_name=task_name,
        celery_task_id=f"cr-{TaskRun.objects.count() + 1}",
        queue="monitoring",
        args=[],
        kwargs={"account_id": account.id} if account else {},
        triggered_by=TriggerKind.API,
        correlation_id="corr-control-room",
    )
    TaskRun.objects.filter(id=record.id).update(
        state=state, duration_ms=duration_ms, enqueued_at=timezone.now() - ago, account=account
    )
    return TaskRun.objects.get(id=record.id)


def schedule(name: str) -> PeriodicTask:
    """An hourly monitor_budget schedule (the default ones come from a data migration and may exist already)."""
    every_hour, _ = IntervalSchedule.objects.get_or_create(every=1, period="hours")
    task, _ = PeriodicTask.objects.update_or_create(
        name=name,
        defaults={"task": "monitor_budget", "interval": every_hour, "crontab": None, "enabled": True, "kwargs": "{}"},
    )
    return task


@pytest.fixture
def staff_viewer(user):
    user.is_staff = True
    user.save()
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_taskrun", "view_deadletter"]))
    return user


@pytest.fixture
def staff_operator(trigger_user):
    trigger_user.is_staff = True
    trigger_user.save()
    trigger_user.user_permissions.add(*Permission.objects.filter(codename__in=["view_taskrun", "view_deadletter"]))
    return trigger_user


@pytest.fixture
def platform_staff(platform_admin):
    platform_admin.user_permissions.add(Permission.objects.get(codename="trigger_tasks"))
    return platform_admin


def test_success_rate_and_percentiles_per_task_over_24h_and_7d(platform_client):
    # given: monitor_budget ran 4 times today (3 succeeded), once 3 days ago
    for ms in (100, 200, 300):
        run(state=RunState.SUCCESS, duration_ms=ms)
    run(state=RunState.FAILURE, duration_ms=1000)
    run(state=RunState.SUCCESS, duration_ms=5000, ago=timedelta(days=3))
    # when
    data = platform_client.get(API).json()
    # then
    day = {row["task"]: row for row in data["stats"]["24h"]}["monitor_budget"]
    week = {row["task"]: row for row in data["stats"]["7d"]}["monitor_budget"]
    assert (day["finished"], day["success_rate"], day["p50_ms"]) == (4, 75.0, 250)
    assert day["p95_ms"] == 895  # percentile_cont interpolates: 300 + 0.85 * 700
    assert (week["finished"], week["success_rate"], week["p50_ms"]) == (5, 80.0, 300)


def test_a_viewer_sees_only_ok_flags_no_schedules_and_no_buttons(viewer_client, default_team):
    account = CloudAccountFactory(team=default_team)
    run(account=account)
    run()  # organisation-wide: not for a viewer
    schedule("Budget monitoring")
    data = viewer_client.get(API).json()
    assert data["can_trigger"] is False and data["platform_admin"] is False
    assert data["schedules"] == []
    assert "workers" not in data["system"] and "queues" not in data["system"]
    assert [r["account"] for r in data["recent_runs"]] == [account.name]


def test_platform_admin_sees_schedules_with_last_state_and_next_run(platform_client):
    task = schedule("Budget monitoring")
    PeriodicTask.objects.filter(id=task.id).update(last_run_at=timezone.now() - timedelta(minutes=20))
    last = run(state=RunState.FAILURE)
    TaskRun.objects.filter(id=last.id).update(trigger_detail="Budget monitoring", triggered_by=TriggerKind.SCHEDULE)
    data = platform_client.get(API).json()
    (shown,) = [s for s in data["schedules"] if s["name"] == "Budget monitoring"]
    assert shown["last_state"] == "FAILURE"
    next_run = timezone.datetime.fromisoformat(shown["next_run_at"])
    assert timedelta(minutes=39) < next_run - timezone.now() <= timedelta(minutes=40)
    assert {q["name"] for q in data["system"]["queues"]} >= {"monitoring", "cost_sync"}


def test_the_page_loads_its_script_and_a_viewer_gets_no_buttons(client, staff_viewer):
    client.force_login(staff_viewer)
    page = client.get("/admin/control-room/")
    assert page.status_code == 200
    assert b"finops/control_room.js" in page.content
    assert b'data-can-trigger="0"' in page.content
    assert b"<script>" not in page.content  # no inline script: the CSP forbids it


def test_cancel_button_cancels_a_run_of_the_operators_team(client, staff_operator, default_team):
    flush_broker()
    queued = run(account=CloudAccountFactory(team=default_team))
    client.force_login(staff_operator)
    response = client.post(reverse("admin-control-room-act"), {"do": "cancel", "id": str(queued.id)})
    assert response.status_code == 302 and response["Location"] == "/admin/control-room/"
    assert TaskRun.objects.get(id=queued.id).state == RunState.CANCELLED


def test_forged_posts_of_a_viewer_are_refused(client, staff_viewer, default_team):
    queued = run(account=CloudAccountFactory(team=default_team))
    letter = DeadLetter.objects.create(run=queued, task_name="monitor_budget", queue="monitoring", error="boom")
    client.force_login(staff_viewer)
    for do, pk in (("cancel", queued.id), ("replay", letter.id), ("run_now", 1)):
        response = client.post(reverse("admin-control-room-act"), {"do": do, "id": str(pk)})
        assert response.status_code == 403, do
    assert TaskRun.objects.get(id=queued.id).state == RunState.QUEUED
    assert DeadLetter.objects.get(id=letter.id).replayed_at is None


def test_an_operator_cannot_act_on_another_teams_run_or_on_schedules(client, staff_operator):
    other = run(account=CloudAccountFactory(team=TeamFactory()))  # another team's account
    periodic = schedule("x")
    client.force_login(staff_operator)
    assert client.post(reverse("admin-control-room-act"), {"do": "cancel", "id": str(other.id)}).status_code == 404
    assert client.post(reverse("admin-control-room-act"), {"do": "run_now", "id": periodic.id}).status_code == 403
    assert client.post(reverse("admin-control-room-act"), {"do": "cancel", "id": "not-a-uuid"}).status_code == 404
    assert TaskRun.objects.get(id=other.id).state == RunState.QUEUED


def test_replay_and_run_now_buttons_of_a_platform_admin(client, platform_staff):
    flush_broker()
    failed = run(state=RunState.FAILURE)
    letter = DeadLetter.objects.create(run=failed, task_name="monitor_budget", queue="monitoring", error="boom")
    periodic = schedule("Budget monitoring")
    client.force_login(platform_staff)
    client.post(reverse("admin-control-room-act"), {"do": "replay", "id": letter.id})
    client.post(reverse("admin-control-room-act"), {"do": "run_now", "id": periodic.id})
    assert DeadLetter.objects.get(id=letter.id).replay_run is not None
    assert TaskRun.objects.filter(trigger_detail="Budget monitoring", triggered_by=TriggerKind.ADMIN).count() == 1
    page = client.get("/admin/control-room/")
    assert b"Enqueued 1" in page.content  # the admin action's own message shows on the control room


def test_cancelling_a_run_waiting_to_retry_keeps_its_earlier_error(client, staff_operator, default_team):
    flush_broker()
    waiting = run(account=CloudAccountFactory(team=default_team), state=RunState.RETRY)
    TaskRun.objects.filter(id=waiting.id).update(error="TransientError: S3 timed out", error_type="TransientError")
    client.force_login(staff_operator)
    client.post(reverse("admin-control-room-act"), {"do": "cancel", "id": str(waiting.id)})
    cancelled = TaskRun.objects.get(id=waiting.id)
    assert cancelled.state == RunState.CANCELLED
    assert cancelled.error == "TransientError: S3 timed out (cancelled before it started)"

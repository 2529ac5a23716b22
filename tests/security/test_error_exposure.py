"""Errors shown to users carry the message, not the traceback: a run that failed unexpectedly on a real worker
shows its viewer and operator the message only (no traceback, no install paths, no worker host and pid), in the
API and the admin; a platform admin sees the traceback, and it is in the worker's log."""

import pytest
from django.contrib.auth.models import Group
from django.db import transaction
from django.urls import reverse
from rest_framework.test import APIClient

from providers_app.models import Role
from providers_app.roles import PLATFORM_ADMINS_GROUP
from providers_app.services.teams import team_default, team_member_set
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.celery_procs import wait_for
from tests.factories import CloudAccountFactory, UserFactory

MESSAGE = "TypeError: 'str' object cannot be interpreted as an integer"


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_failed_runs_traceback_is_for_platform_admins_only(celery_worker_proc, client):
    # given: users of the account's team, and a platform admin
    account = CloudAccountFactory(name="prod")
    users = {}
    for role in (Role.VIEWER, Role.OPERATOR):
        users[role.value] = UserFactory(username=f"team-{role.value}", is_staff=True)
        team_member_set(team=team_default(), user=users[role.value], role=role)
    platform = UserFactory(username="platform", is_staff=True)
    platform.groups.add(Group.objects.get(name=PLATFORM_ADMINS_GROUP))
    # when: a run of that account fails with an unexpected error (time.sleep("x") raises TypeError) on a worker
    with transaction.atomic():
        queued = task_enqueue(
            task_name="platform_probe", kwargs={"account_id": account.id, "sleep": "x"}, triggered_by=TriggerKind.API
        )
    run = wait_for(
        lambda: TaskRun.objects.filter(id=queued.id, state=RunState.FAILURE).first(), timeout=60, what="the failure"
    )
    letter = wait_for(lambda: DeadLetter.objects.filter(run=run).first(), what="the dead letter")
    # then the ledger keeps the message and the traceback apart
    assert run.error.startswith("TypeError:") and "Traceback" not in run.error
    assert run.error_traceback.startswith("Traceback (most recent call last):")
    assert "site-packages" in run.error_traceback or "tasks_app" in run.error_traceback
    assert letter.error == run.error
    # the team's users see the message only, in the API and the admin
    for role, user in users.items():
        body = api(user).get(f"/api/v1/tasks/runs/{run.id}").json()
        status = api(user).get(f"/api/v1/tasks/status/{run.celery_task_id}").json()
        dead = api(user).get(f"/api/v1/tasks/dead-letters/{letter.id}").json()
        assert body["error"] == run.error and body["error_traceback"] == "" and body["worker"] == "", role
        assert status["error"] == run.error and status["run"]["error_traceback"] == "", role
        assert "Traceback" not in dead["error"], role
        client.force_login(user)
        for url in (
            reverse("admin:tasks_app_taskrun_change", args=[run.pk]),
            reverse("admin:tasks_app_deadletter_change", args=[letter.pk]),
        ):
            page = client.get(url)
            html = page.content.decode()
            assert page.status_code == 200, (role, url)
            assert "TypeError" in html and "Traceback" not in html and "site-packages" not in html, (role, url)
            assert run.worker not in html, (role, url)
    # a platform admin sees the traceback and the worker
    body = api(platform).get(f"/api/v1/tasks/runs/{run.id}").json()
    assert body["error_traceback"] == run.error_traceback and body["worker"] == run.worker
    client.force_login(platform)
    assert (
        "Traceback (most recent call last)"
        in client.get(reverse("admin:tasks_app_taskrun_change", args=[run.pk])).content.decode()
    )
    # and the worker logged it
    wait_for(lambda: "Traceback (most recent call last)" in celery_worker_proc.log, what="the logged traceback")
